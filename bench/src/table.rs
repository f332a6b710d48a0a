//! The result table: one [`Line`] per case, the median of its runs, printed as plain text or
//! Markdown.

use std::fmt::Write as _;

/// One case's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// What was measured, e.g. `legacy csv 1M 0ms`.
    pub case: String,
    /// Rows (imports) or events (intake, backlog, memory) the case moved.
    pub count: u64,
    /// Wall seconds.
    pub wall_s: f64,
    /// Rows or events per second: `count / wall_s` (for the memory lines, events settled
    /// while watched per second).
    pub rate: f64,
    /// CPU seconds of the daemon process during the case.
    pub cpu_s: f64,
    /// Peak resident set of the daemon process, in MiB (`VmHWM`).
    pub peak_rss_mib: f64,
    /// Wall time over the wire floor measured in the same run, for the import cases.
    pub wire: Option<f64>,
    /// Further figures of the case, named: `p99 ms`, `first row s`, `pages again`, `idle MiB`.
    pub extras: Vec<(&'static str, f64)>,
}

impl Line {
    /// The value of extra figure `name`.
    pub fn extra(&self, name: &str) -> Option<f64> {
        self.extras
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn notes(&self) -> String {
        self.extras
            .iter()
            .map(|(name, value)| match *name {
                "pages again" => format!("{value:.0} pages fetched again"),
                "p99 ms" => format!("p99 {value:.1} ms"),
                "first row s" => format!("first new row after {value:.2} s"),
                "idle MiB" => format!("idle daemon {value:.1} MiB"),
                _ => format!("{name} {value:.2}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The median of each figure over the runs of one case (the upper median for an even count).
pub fn median(runs: &[Line]) -> Option<Line> {
    let first = runs.first()?;
    let mid = |values: Vec<f64>| -> f64 {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let field = |get: &dyn Fn(&Line) -> f64| mid(runs.iter().map(get).collect());
    let wires: Vec<f64> = runs.iter().filter_map(|l| l.wire).collect();
    Some(Line {
        case: first.case.clone(),
        count: first.count,
        wall_s: field(&|l| l.wall_s),
        rate: field(&|l| l.rate),
        cpu_s: field(&|l| l.cpu_s),
        peak_rss_mib: field(&|l| l.peak_rss_mib),
        wire: (!wires.is_empty()).then(|| mid(wires)),
        extras: first
            .extras
            .iter()
            .map(|(name, _)| (*name, field(&|l| l.extra(name).unwrap_or(f64::NAN))))
            .collect(),
    })
}

const HEADERS: [&str; 8] = [
    "case",
    "rows/events",
    "wall s",
    "per s",
    "CPU s",
    "peak RSS MiB",
    "x wire",
    "notes",
];

fn cells(line: &Line) -> [String; 8] {
    [
        line.case.clone(),
        thousands(line.count),
        format!("{:.3}", line.wall_s),
        thousands(line.rate.round() as u64),
        format!("{:.2}", line.cpu_s),
        format!("{:.1}", line.peak_rss_mib),
        line.wire
            .map_or_else(|| "-".to_owned(), |w| format!("{w:.2}")),
        line.notes(),
    ]
}

/// The table as aligned plain text, a header line first.
pub fn plain(lines: &[Line]) -> String {
    let rows: Vec<[String; 8]> = lines.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut put = |row: &[String]| {
        let mut text = String::new();
        for (at, (cell, width)) in row.iter().zip(widths).enumerate() {
            // Names and notes read left-aligned, figures right-aligned.
            if at == 0 || at == 7 {
                let _ = write!(text, "{cell:<width$}  ");
            } else {
                let _ = write!(text, "{cell:>width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    put(&HEADERS.map(str::to_owned));
    for row in &rows {
        put(row);
    }
    out
}

/// The table as Markdown.
pub fn markdown(lines: &[Line]) -> String {
    let mut out = format!("| {} |\n", HEADERS.join(" | "));
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for line in lines {
        let _ = writeln!(out, "| {} |", cells(line).join(" | "));
    }
    out
}

/// `1234567` as `1,234,567`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(wall_s: f64, wire: Option<f64>) -> Line {
        Line {
            case: "legacy csv 100k 0ms".to_owned(),
            count: 100_000,
            wall_s,
            rate: 100_000.0 / wall_s,
            cpu_s: wall_s / 2.0,
            peak_rss_mib: 20.0 + wall_s,
            wire,
            extras: vec![("p99 ms", wall_s * 10.0)],
        }
    }

    #[test]
    fn the_median_is_taken_per_figure() {
        let runs = [
            line(3.0, Some(1.5)),
            line(1.0, Some(1.1)),
            line(2.0, Some(1.2)),
        ];
        let middle = median(&runs).expect("three runs");
        assert_eq!(middle.wall_s, 2.0);
        assert_eq!(middle.rate, 50_000.0);
        assert_eq!(middle.wire, Some(1.2));
        assert_eq!(middle.extra("p99 ms"), Some(20.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn tables_show_every_figure() {
        let lines = [line(0.5, Some(1.25)), line(2.0, None)];
        let text = plain(&lines);
        assert!(text.starts_with("case"), "{text}");
        assert!(text.contains("200,000"), "{text}");
        assert!(text.contains("1.25"), "{text}");
        assert!(text.contains("p99 5.0 ms"), "{text}");
        let md = markdown(&lines);
        assert_eq!(md.lines().count(), 4);
        assert!(
            md.contains(
                "| legacy csv 100k 0ms | 100,000 | 2.000 | 50,000 | 1.00 | 22.0 | - | p99 20.0 ms |"
            ),
            "{md}"
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
    }
}
