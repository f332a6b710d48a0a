//! Serving a sheet's records and counts with what the admin API changed applied: pages of
//! `GET /v1/sheets/{id}/records` narrowed by `ids`, `commitId` and `sinceCommitId`, and the
//! sheet as the admin API shows it.

use std::collections::HashSet;
use std::sync::LazyLock;

use super::World;
use super::overlay::{RecordRef, SheetOverlay};
use crate::SimConfig;
use crate::admin::SheetRow;
use crate::generate::{Counts, RecordsWriter, SheetKey, SheetRef};
use crate::rejection::Rejection;

/// `GET /v1/sheets/{id}/records` parameters beyond the sheet.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecordsQuery {
    pub(crate) page_number: u64,
    pub(crate) page_size: u64,
    pub(crate) ids: Vec<String>,
    pub(crate) commit_id: Option<String>,
    pub(crate) since_commit_id: Option<String>,
}

impl RecordsQuery {
    /// Whether this asks for a plain page of the whole sheet.
    pub(crate) fn is_plain(&self) -> bool {
        self.ids.is_empty() && self.commit_id.is_none() && self.since_commit_id.is_none()
    }
}

/// The records a query selects, before paging.
enum Selection {
    /// Every live record: generated rows, then added records.
    All,
    /// The live generated rows: the sheet's import commit.
    Generated,
    /// These records, in this order.
    Listed(Vec<RecordRef>),
}

/// A sheet's overlay and key, what every step of reading a changed sheet needs.
#[derive(Clone, Copy)]
struct SheetView<'a> {
    overlay: &'a SheetOverlay,
    key: SheetKey,
    sheet: &'a SheetRef,
}

impl World {
    /// The sheet's overlay; an unchanged sheet reads as an empty one.
    pub(super) fn overlay(&self, sheet_id: &str) -> &SheetOverlay {
        static UNCHANGED: LazyLock<SheetOverlay> = LazyLock::new(SheetOverlay::default);
        self.overlays.get(sheet_id).unwrap_or(&UNCHANGED)
    }

    pub(crate) fn has_overlay(&self, sheet_id: &str) -> bool {
        self.overlays.contains_key(sheet_id)
    }

    pub(crate) fn counts(&self, sheet: &SheetRef) -> Counts {
        self.overlays
            .get(&sheet.id)
            .map_or_else(|| Counts::generated(sheet), |overlay| overlay.counts(sheet))
    }

    /// Records `commit_ids` touched, live ones only, each once, in the order first touched.
    fn touched(&self, view: SheetView<'_>, commit_ids: &[String]) -> Vec<RecordRef> {
        let mut seen = HashSet::new();
        commit_ids
            .iter()
            .filter_map(|commit_id| self.commits.get(commit_id))
            .flatten()
            .filter_map(|id| view.overlay.resolve(view.key, view.sheet, id))
            .filter(|record| seen.insert(*record))
            .collect()
    }

    /// Writes a page of `GET /v1/sheets/{id}/records` with the overlay, `ids`, `commitId` and
    /// `sinceCommitId` applied.
    pub(crate) fn write_records(
        &self,
        seed: u64,
        sheet: &SheetRef,
        query: &RecordsQuery,
        out: &mut Vec<u8>,
    ) -> Result<(), Rejection> {
        let view = SheetView {
            overlay: self.overlay(&sheet.id),
            key: SheetKey::new(seed, sheet),
            sheet,
        };
        let selection = self.select(view, query)?;
        let start = (query.page_number - 1).saturating_mul(query.page_size);
        let mut writer = RecordsWriter::start(out, seed, sheet);
        match &selection {
            Selection::Listed(listed) => {
                let skip = usize::try_from(start).unwrap_or(usize::MAX);
                let take = usize::try_from(query.page_size).unwrap_or(usize::MAX);
                for record in listed.iter().skip(skip).take(take) {
                    view.overlay.write(&mut writer, out, *record);
                }
            }
            Selection::All | Selection::Generated => view.overlay.write_in_order(
                &mut writer,
                out,
                sheet,
                (start, query.page_size),
                matches!(selection, Selection::All),
            ),
        }
        let import_commit = view.key.commit_id();
        let latest_commit = view.overlay.commits.last().unwrap_or(&import_commit);
        writer.finish(out, view.overlay.counts(sheet), latest_commit);
        Ok(())
    }

    /// What `commitId`, then `sinceCommitId`, then `ids` narrow the sheet to.
    fn select(&self, view: SheetView<'_>, query: &RecordsQuery) -> Result<Selection, Rejection> {
        let mut selection = Selection::All;
        if let Some(commit_id) = &query.commit_id {
            selection = self.commit_selection(view, commit_id)?;
        }
        if let Some(since) = &query.since_commit_id {
            if query.commit_id.is_some() {
                return Err(Rejection::bad(
                    "sinceCommitId",
                    "use either commitId or sinceCommitId, not both",
                ));
            }
            selection = self.since_selection(view, since)?;
        }
        if !query.ids.is_empty() {
            selection = Selection::Listed(listed_ids(view, &selection, &query.ids));
        }
        Ok(selection)
    }

    /// The records one commit touched; the import commit stands for every generated row.
    fn commit_selection(
        &self,
        view: SheetView<'_>,
        commit_id: &str,
    ) -> Result<Selection, Rejection> {
        if view.key.commit_id() == commit_id {
            Ok(Selection::Generated)
        } else if view.overlay.commits.iter().any(|known| known == commit_id) {
            Ok(Selection::Listed(
                self.touched(view, &[commit_id.to_owned()]),
            ))
        } else {
            Err(Rejection::not_found(
                "commitId",
                format!("Commit {commit_id} not found in sheet {}", view.sheet.id),
            ))
        }
    }

    /// The records the commits after `since` touched.
    fn since_selection(&self, view: SheetView<'_>, since: &str) -> Result<Selection, Rejection> {
        let commits = &view.overlay.commits;
        let later = if view.key.commit_id() == since {
            &commits[..]
        } else {
            let position = commits
                .iter()
                .position(|commit_id| commit_id == since)
                .ok_or_else(|| {
                    Rejection::not_found(
                        "sinceCommitId",
                        format!("Commit {since} not found in sheet {}", view.sheet.id),
                    )
                })?;
            &commits[position + 1..]
        };
        Ok(Selection::Listed(self.touched(view, later)))
    }

    /// The sheet as it is now, in served order; `None` when there is no such sheet.
    pub(crate) fn sheet_rows(&self, config: &SimConfig, sheet_id: &str) -> Option<Vec<SheetRow>> {
        let scope = self.find_sheet(config, sheet_id)?;
        let sheet = &scope.sheet;
        let overlay = self.overlay(&sheet.id);
        let key = SheetKey::new(config.seed, sheet);
        Some(
            overlay
                .live_records(sheet)
                .map(|record| overlay.sheet_row(key, sheet, record))
                .collect(),
        )
    }
}

/// The live records `ids` names, in the order named and each once, within what `selection`
/// already narrowed the sheet to.
fn listed_ids(view: SheetView<'_>, selection: &Selection, ids: &[String]) -> Vec<RecordRef> {
    let allowed: Option<HashSet<RecordRef>> = match selection {
        Selection::Listed(listed) => Some(listed.iter().copied().collect()),
        Selection::All | Selection::Generated => None,
    };
    let generated_only = matches!(selection, Selection::Generated);
    let mut seen = HashSet::new();
    ids.iter()
        .filter_map(|id| view.overlay.resolve(view.key, view.sheet, id))
        .filter(|record| !generated_only || matches!(record, RecordRef::Generated(_)))
        .filter(|record| {
            allowed
                .as_ref()
                .is_none_or(|allowed| allowed.contains(record))
        })
        .filter(|record| seen.insert(*record))
        .collect()
}
