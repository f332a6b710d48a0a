//! `flatsync top`: a live view of the deliveries in flight, the sinks, the poll cursors and
//! the daemon's retries, sampled from the state database (read-only) and, when the config has
//! an `[admin]` listener, its `/metrics`. On a terminal it is a full-screen view (ratatui over
//! crossterm: keys only, so it works over SSH); otherwise, or with `--plain`, it prints a plain
//! text block per interval.

#[cfg(test)]
mod fixtures;
mod plain;
mod sample;
mod scrape;
mod view;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use flatsync_core::ops::EventDetail;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::ops_cli::Target;
use sample::{Sample, Sampler, SortBy};

/// `flatsync top`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds between samples, e.g. 1, 0.5 or 5.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_interval)]
    interval: Duration,
    /// Print plain text blocks even on a terminal (the default when stdout is not one).
    #[arg(long)]
    plain: bool,
    /// Print one plain text block and exit.
    #[arg(long, conflicts_with = "iterations")]
    once: bool,
    /// Stop after this many samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
}

/// `--interval`: seconds, at least 0.1 and at most an hour.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds, like 1 or 0.5"))?;
    if !(0.1..=3_600.0).contains(&seconds) {
        return Err(format!("{seconds} s: use 0.1 to 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Runs `flatsync top`.
pub(crate) fn run(args: TopArgs) -> anyhow::Result<()> {
    let located = args.target.locate()?;
    let db = located.open(true)?;
    let mut sampler = Sampler::open(db, located.config)?;
    let iterations = if args.once { Some(1) } else { args.iterations };
    if args.plain || args.once || !std::io::stdout().is_terminal() {
        plain::run(&mut sampler, args.interval, iterations)
    } else {
        interactive(&mut sampler, args.interval, iterations)
    }
}

/// The full-screen view, until `q` (or `iterations` samples).
fn interactive(
    sampler: &mut Sampler,
    interval: Duration,
    iterations: Option<u64>,
) -> anyhow::Result<()> {
    // `try_init` enters raw mode and the alternate screen, and installs a panic hook that
    // leaves them before the panic message prints; `restore` leaves them on every other way out.
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            ratatui::restore();
            anyhow::bail!("cannot take over the terminal ({e}); try `flatsync top --plain`");
        }
    };
    let result = event_loop(&mut terminal, sampler, interval, iterations);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    sampler: &mut Sampler,
    interval: Duration,
    iterations: Option<u64>,
) -> anyhow::Result<()> {
    let mut app = App::default();
    let mut taken = 0;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            if iterations.is_some_and(|n| taken >= n) {
                return Ok(());
            }
            app.refresh(sampler);
            taken += 1;
            next = Instant::now() + interval;
        }
        terminal.draw(|frame| view::draw(frame, &app))?;
        if event::poll(next.saturating_duration_since(Instant::now()))?
            && let Event::Key(key) = event::read()?
            && key.kind != KeyEventKind::Release
        {
            match app.on_key(key) {
                Action::Quit => return Ok(()),
                Action::Refresh => app.refresh(sampler),
                Action::Redraw => {}
            }
        }
    }
}

/// What a key asks of the loop.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// Leave `top`.
    Quit,
    /// Read the state again now (a detail was opened).
    Refresh,
    /// Draw again with what is known.
    Redraw,
}

/// Which screen is shown.
#[derive(Debug, Default)]
enum Screen {
    /// The overview with the bars.
    #[default]
    Overview,
    /// One event, as `events show` prints it.
    Detail {
        /// The event.
        event_id: String,
        /// What was read of it; `None` until read, or once it left the inbox.
        detail: Option<Box<EventDetail>>,
        /// Lines scrolled off the top.
        scroll: u16,
    },
}

/// What the view shows and the keys change.
#[derive(Debug, Default)]
struct App {
    sort: SortBy,
    sample: Option<Sample>,
    /// The last reading's error, shown until a reading succeeds.
    error: Option<String>,
    /// The selected bar, by (event, sink), so that it stays selected as bars move.
    selected: Option<(String, String)>,
    screen: Screen,
}

impl App {
    fn refresh(&mut self, sampler: &mut Sampler) {
        match sampler.sample(self.sort) {
            Ok(sample) => {
                self.sample = Some(sample);
                self.error = None;
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
        if let Screen::Detail {
            event_id, detail, ..
        } = &mut self.screen
        {
            match sampler.detail(event_id) {
                Ok(found) => *detail = found.map(Box::new),
                Err(e) => self.error = Some(format!("{e:#}")),
            }
        }
        self.keep_selection();
    }

    /// Index of the selected bar; the first one when the selected bar is gone.
    fn selected_index(&self) -> Option<usize> {
        let bars = &self.sample.as_ref()?.in_flight;
        if bars.is_empty() {
            return None;
        }
        let found = self.selected.as_ref().and_then(|(event, sink)| {
            bars.iter()
                .position(|b| &b.event_id == event && &b.sink == sink)
        });
        Some(found.unwrap_or(0))
    }

    fn select(&mut self, index: usize) {
        self.selected = self
            .sample
            .as_ref()
            .and_then(|s| s.in_flight.get(index))
            .map(|b| (b.event_id.clone(), b.sink.clone()));
    }

    fn keep_selection(&mut self) {
        if let Some(index) = self.selected_index() {
            self.select(index);
        }
    }

    fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        match &mut self.screen {
            Screen::Overview => self.on_overview_key(key.code),
            Screen::Detail { scroll, .. } => match key.code {
                KeyCode::Char('q') => Action::Quit,
                KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => {
                    self.screen = Screen::Overview;
                    Action::Redraw
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    *scroll = scroll.saturating_sub(1);
                    Action::Redraw
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    *scroll = scroll.saturating_add(1);
                    Action::Redraw
                }
                _ => Action::Redraw,
            },
        }
    }

    fn on_overview_key(&mut self, code: KeyCode) -> Action {
        let index = self.selected_index();
        let count = self.sample.as_ref().map_or(0, |s| s.in_flight.len());
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                if let Some(sample) = &mut self.sample {
                    self.sort.sort(&mut sample.in_flight);
                }
            }
            KeyCode::Up | KeyCode::Char('k') => {
                if let Some(i) = index {
                    self.select(i.saturating_sub(1));
                }
            }
            KeyCode::Down | KeyCode::Char('j') => {
                if let Some(i) = index {
                    self.select((i + 1).min(count.saturating_sub(1)));
                }
            }
            KeyCode::Enter => {
                if let Some(i) = index
                    && let Some(bar) = self.sample.as_ref().and_then(|s| s.in_flight.get(i))
                {
                    self.screen = Screen::Detail {
                        event_id: bar.event_id.clone(),
                        detail: None,
                        scroll: 0,
                    };
                    return Action::Refresh;
                }
            }
            _ => {}
        }
        Action::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(app: &mut App, code: KeyCode) -> Action {
        app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn selected(app: &App) -> Option<&str> {
        app.selected.as_ref().map(|(event, _)| event.as_str())
    }

    #[test]
    fn keys_sort_select_open_the_detail_go_back_and_quit() {
        // evt-new is the newest and the furthest along.
        let mut app = App {
            sample: Some(fixtures::sample(&[("evt-old", 3_000), ("evt-new", 9_000)])),
            ..App::default()
        };
        app.sort.sort(&mut app.sample.as_mut().unwrap().in_flight);
        app.keep_selection();
        assert_eq!(selected(&app), Some("evt-new"), "the first bar is selected");

        assert_eq!(press(&mut app, KeyCode::Down), Action::Redraw);
        assert_eq!(selected(&app), Some("evt-old"));
        press(&mut app, KeyCode::Char('j'));
        assert_eq!(
            selected(&app),
            Some("evt-old"),
            "the last bar stays selected"
        );
        press(&mut app, KeyCode::Char('k'));
        assert_eq!(selected(&app), Some("evt-new"));

        press(&mut app, KeyCode::Char('s'));
        assert_eq!(app.sort, SortBy::Slowest);
        let bars = &app.sample.as_ref().unwrap().in_flight;
        assert_eq!(bars[0].event_id, "evt-new", "same rate: newest first");
        assert_eq!(
            selected(&app),
            Some("evt-new"),
            "the selection follows its bar"
        );
        press(&mut app, KeyCode::Char('s'));
        assert_eq!(app.sort, SortBy::MostRows);

        press(&mut app, KeyCode::Down);
        assert_eq!(press(&mut app, KeyCode::Enter), Action::Refresh);
        let Screen::Detail { event_id, .. } = &app.screen else {
            panic!("Enter opens the detail: {:?}", app.screen);
        };
        assert_eq!(event_id, "evt-old");
        assert_eq!(press(&mut app, KeyCode::Down), Action::Redraw);
        assert!(matches!(app.screen, Screen::Detail { scroll: 1, .. }));
        assert_eq!(
            press(&mut app, KeyCode::Esc),
            Action::Redraw,
            "Esc in the detail goes back, it does not quit"
        );
        assert!(matches!(app.screen, Screen::Overview));

        assert_eq!(press(&mut app, KeyCode::Char('q')), Action::Quit);
        assert_eq!(press(&mut app, KeyCode::Esc), Action::Quit);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit,
            "Ctrl-C quits in raw mode too"
        );
    }

    #[test]
    fn enter_without_bars_stays_on_the_overview() {
        let mut app = App {
            sample: Some(fixtures::sample(&[])),
            ..App::default()
        };
        assert_eq!(press(&mut app, KeyCode::Enter), Action::Redraw);
        assert!(matches!(app.screen, Screen::Overview));
        assert_eq!(press(&mut app, KeyCode::Down), Action::Redraw);
    }

    #[test]
    fn an_interval_is_a_number_of_seconds_within_bounds() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0").unwrap_err().contains("0.1 to 3600"));
        assert!(
            parse_interval("1s")
                .unwrap_err()
                .contains("not a number of seconds")
        );
    }
}
