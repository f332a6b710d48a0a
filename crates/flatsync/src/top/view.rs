//! The full-screen view: header, the bars of the deliveries in flight, the sinks, the poll
//! cursors and the metrics; or one event's detail.

use flatsync_core::ops::{self, EventDetail};
use flatsync_core::state::now_ms;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState, Wrap};

use super::plain::{event_counts, in_flight_count, metrics_lines};
use super::sample::{Sample, eta_text, percent_text, rate_text, rows_text};
use super::{App, Screen};
use crate::ops_cli::{age, short};

/// Characters of a progress bar.
const BAR_WIDTH: usize = 20;

/// Draws the screen `app` is on.
pub(super) fn draw(frame: &mut Frame<'_>, app: &App) {
    let [head, body, keys] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(header(app), head);
    match &app.screen {
        Screen::Overview => match &app.sample {
            Some(sample) => overview(frame, app, sample, body),
            None => frame.render_widget(Paragraph::new("Reading the state database..."), body),
        },
        Screen::Detail {
            event_id,
            detail,
            scroll,
        } => {
            let text = match detail {
                Some(detail) => detail_lines(detail),
                None => vec![Line::from(format!(
                    "Event {event_id} is not in the state database (any more)."
                ))],
            };
            frame.render_widget(
                Paragraph::new(text)
                    .block(titled(&format!("Event {event_id}")))
                    .wrap(Wrap { trim: false })
                    .scroll((*scroll, 0)),
                body,
            );
        }
    }
    let help = match app.screen {
        Screen::Overview => "q quit  s sort  ↑/↓ j/k select  Enter detail",
        Screen::Detail { .. } => "Esc back  ↑/↓ j/k scroll  q quit",
    };
    frame.render_widget(
        Paragraph::new(help).style(Style::new().add_modifier(Modifier::REVERSED)),
        keys,
    );
}

fn titled(title: &str) -> Block<'static> {
    Block::new()
        .borders(Borders::ALL)
        .title(format!(" {title} "))
}

fn header(app: &App) -> Paragraph<'static> {
    let now = now_ms();
    let mut lines = vec![Line::from(vec![
        Span::styled("flatsync top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {}  sort: {}",
            ops::format_utc(now),
            app.sort.label()
        )),
    ])];
    if let Some(sample) = &app.sample {
        lines.push(Line::from(format!(
            "State {}  Events: {}",
            sample.status.state_db,
            event_counts(sample)
        )));
        lines.push(Line::from(format!(
            "In flight: {}  Dead letters: {}",
            in_flight_count(sample),
            sample.dead_letters()
        )));
    }
    if let Some(error) = &app.error {
        lines.truncate(1);
        lines.push(Line::styled(
            format!("Cannot read: {}", short(error, 200)),
            Style::new().fg(Color::Red),
        ));
    }
    Paragraph::new(lines)
}

fn overview(frame: &mut Frame<'_>, app: &App, sample: &Sample, area: Rect) {
    let sink_height = sample.sinks.len().max(1) as u16 + 3;
    // Room for the three metrics lines (retries, failed answers, sinks) even without polling.
    let lower = sample.status.polling.len().max(3) as u16 + 3;
    let [bars, sinks, bottom] = Layout::vertical([
        Constraint::Min(5),
        Constraint::Length(sink_height),
        Constraint::Length(lower),
    ])
    .areas(area);
    let mut state = TableState::new().with_selected(app.selected_index());
    frame.render_stateful_widget(in_flight(sample), bars, &mut state);
    frame.render_widget(sink_table(sample), sinks);
    let [polls, metrics] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    frame.render_widget(poll_table(sample), polls);
    let lines: Vec<Line<'_>> = metrics_lines(&sample.metrics)
        .into_iter()
        .map(Line::from)
        .collect();
    frame.render_widget(
        Paragraph::new(lines)
            .block(titled("Retries and errors"))
            .wrap(Wrap { trim: true }),
        metrics,
    );
}

/// `[██████░░░░░░░░░░░░░░]`, or a blank bar while the total is unknown.
fn bar(fraction: Option<f64>) -> String {
    let filled = fraction.map_or(0, |f| (f * BAR_WIDTH as f64).floor() as usize);
    let unknown = if fraction.is_some() { '░' } else { ' ' };
    let mut text = String::with_capacity(BAR_WIDTH * 3 + 2);
    text.push('[');
    text.extend(std::iter::repeat_n('█', filled.min(BAR_WIDTH)));
    text.extend(std::iter::repeat_n(
        unknown,
        BAR_WIDTH - filled.min(BAR_WIDTH),
    ));
    text.push(']');
    text
}

fn in_flight(sample: &Sample) -> Table<'static> {
    let rows: Vec<Row<'_>> = sample
        .in_flight
        .iter()
        .map(|p| {
            Row::new(vec![
                Cell::from(p.event_id.clone()),
                Cell::from(p.sink.clone()),
                Cell::from(bar(p.fraction())).style(Style::new().fg(Color::Green)),
                Cell::from(percent_text(p.fraction())),
                Cell::from(format!("rows {}", rows_text(p.done, p.expected))),
                Cell::from(rate_text(p.rate)),
                Cell::from(format!("ETA {}", eta_text(p.eta))),
                Cell::from(p.topic.clone()),
            ])
        })
        .collect();
    let title = format!("In flight ({})", in_flight_count(sample));
    Table::new(
        rows,
        [
            Constraint::Max(28),
            Constraint::Max(16),
            Constraint::Length(BAR_WIDTH as u16 + 2),
            Constraint::Length(5),
            Constraint::Length(20),
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Min(8),
        ],
    )
    .header(
        Row::new([
            "EVENT", "SINK", "PROGRESS", "", "ROWS", "RATE", "ETA", "TOPIC",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(titled(&title))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .highlight_symbol("> ")
}

fn sink_table(sample: &Sample) -> Table<'static> {
    let now = now_ms();
    let up = |sink: &str| match &sample.metrics {
        super::scrape::Scrape::Read(m) => match (m.sink_stalled.get(sink), m.sink_up.get(sink)) {
            (Some(true), _) => "stalled",
            (_, Some(true)) => "up",
            (_, Some(false)) => "down",
            _ => "-",
        },
        _ => "-",
    };
    let rows: Vec<Row<'_>> = sample
        .sinks
        .iter()
        .map(|row| {
            let s = &row.status;
            let error = s.last_error.as_ref().map_or_else(String::new, |e| {
                format!(
                    "{} ago, {}: {}",
                    age((now - e.at_ms).max(0) / 1_000),
                    e.event_id,
                    short(&e.error, 120)
                )
            });
            let failed = Cell::from(s.failed.to_string());
            Row::new(vec![
                Cell::from(s.name.clone()),
                Cell::from(up(&s.name)),
                Cell::from(rate_text(row.rate)),
                Cell::from(s.done.to_string()),
                Cell::from(s.pending.to_string()),
                if s.failed > 0 {
                    failed.style(Style::new().fg(Color::Red))
                } else {
                    failed
                },
                Cell::from(s.rows_delivered.to_string()),
                Cell::from(s.lag_secs.map_or_else(|| "-".to_owned(), |l| age(l as i64))),
                Cell::from(error).style(Style::new().fg(Color::Red)),
            ])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Max(16),
            Constraint::Length(7),
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(6),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "SINK",
            "STATE",
            "RATE",
            "DONE",
            "PENDING",
            "FAILED",
            "ROWS",
            "LAG",
            "LAST ERROR",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(titled("Sinks"))
}

fn poll_table(sample: &Sample) -> Table<'static> {
    let now = now_ms();
    let rows: Vec<Row<'_>> = sample
        .status
        .polling
        .iter()
        .map(|p| {
            Row::new(vec![
                p.environment_id.clone(),
                ops::format_utc(p.cursor_ms),
                age((now - p.cursor_ms).max(0) / 1_000),
                p.unacknowledged.to_string(),
            ])
        })
        .collect();
    let title = if rows.is_empty() {
        "Poll cursors (no environment polled)"
    } else {
        "Poll cursors"
    };
    Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(21),
            Constraint::Length(6),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new(["ENVIRONMENT", "CURSOR", "LAG", "UNACKED"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(titled(title))
}

/// The event's head, deliveries, streams (with their totals) and checkpoints, as
/// `events show` prints them, without the body.
fn detail_lines(event: &EventDetail) -> Vec<Line<'static>> {
    let now = now_ms();
    let mut lines = vec![
        Line::from(format!("topic:    {}", event.topic)),
        Line::from(format!("status:   {}", event.status)),
        Line::from(format!(
            "received: {} ({} ago)",
            ops::format_utc(event.received_at_ms),
            age((now - event.received_at_ms).max(0) / 1_000)
        )),
    ];
    if let Some(detail) = &event.detail {
        lines.push(Line::from(format!("detail:   {detail}")));
    }
    lines.push(Line::from(""));
    lines.push(Line::styled(
        "Deliveries",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    for d in &event.deliveries {
        lines.push(Line::from(format!(
            "  {}: {}, {} rows, generation {}, streams [{}]",
            d.sink,
            d.status,
            d.rows,
            d.generation,
            d.streams.join(", ")
        )));
        if let Some(error) = &d.error {
            lines.push(Line::styled(
                format!("    error: {error}"),
                Style::new().fg(Color::Red),
            ));
        }
    }
    lines.push(Line::from(""));
    lines.push(Line::styled(
        "Streams",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    for s in &event.streams {
        let total = s
            .total_rows
            .map_or_else(|| "total not known yet".to_owned(), |t| format!("{t} rows"));
        lines.push(Line::from(format!(
            "  {}. {} (kind {}, source {}, {} rows per page, {total})",
            s.ordinal, s.stream, s.kind, s.source_ref, s.page_size
        )));
    }
    lines.push(Line::from(""));
    lines.push(Line::styled(
        "Checkpoints",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    for c in &event.checkpoints {
        lines.push(Line::from(format!(
            "  {}",
            crate::ops_cli::checkpoint_line(c)
        )));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_fills_with_the_fraction_and_stays_blank_without_a_total() {
        assert_eq!(bar(Some(0.0)), format!("[{}]", "░".repeat(20)));
        assert_eq!(
            bar(Some(0.25)),
            format!("[{}{}]", "█".repeat(5), "░".repeat(15))
        );
        assert_eq!(bar(Some(1.0)), format!("[{}]", "█".repeat(20)));
        assert_eq!(bar(None), format!("[{}]", " ".repeat(20)));
    }

    #[test]
    fn the_overview_shows_each_bar_with_rows_rate_and_eta() {
        let app = App {
            sample: Some(crate::top::fixtures::sample(&[("evt-1", 5_000)])),
            ..App::default()
        };
        let mut terminal =
            ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 30)).unwrap();
        terminal.draw(|frame| draw(frame, &app)).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .chunks(160)
            .map(|row| row.iter().map(|cell| cell.symbol()).collect::<String>() + "\n")
            .collect();
        let line = screen
            .lines()
            .find(|l| l.contains("evt-1"))
            .unwrap_or_else(|| panic!("no bar for evt-1:\n{screen}"));
        for figure in [
            "archive",
            "rows 5000/20000",
            "25%",
            "1000 rows/s",
            "ETA 15s",
            "█████",
        ] {
            assert!(line.contains(figure), "{figure} missing from: {line}");
        }
        assert!(screen.contains("Dead letters: 1"), "{screen}");
        assert!(screen.contains("disk full"), "the last error: {screen}");
        assert!(screen.contains("q quit"), "the keys: {screen}");
    }
}
