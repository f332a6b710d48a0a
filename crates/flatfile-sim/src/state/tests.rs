//! The world's record pages and counts after deletions, edits and additions.

use serde_json::{Map, Value as Json, json};

use super::{RecordsQuery, World};
use crate::SimConfig;
use crate::admin::{EventShape, NewRecords, RecordEdit};
use crate::generate::Counts;

fn config(rows: u64) -> SimConfig {
    SimConfig {
        rows,
        ..SimConfig::default()
    }
}

fn page(world: &World, config: &SimConfig, sheet_id: &str, query: RecordsQuery) -> Json {
    let scope = world.find_sheet(config, sheet_id).expect("sheet exists");
    let mut out = Vec::new();
    world
        .write_records(config.seed, &scope.sheet, &query, &mut out)
        .expect("page is served");
    serde_json::from_slice(&out).expect("page is JSON")
}

fn ids(page: &Json) -> Vec<String> {
    page["data"]["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|record| record["id"].as_str().expect("id").to_owned())
        .collect()
}

fn all(page_number: u64, page_size: u64) -> RecordsQuery {
    RecordsQuery {
        page_number,
        page_size,
        ..RecordsQuery::default()
    }
}

#[test]
fn paging_skips_deleted_rows_and_ends_with_the_added_ones() {
    let config = config(20);
    let mut world = World::new("t".to_owned());
    let sheet_id = "us_sh_w-contacts";
    let generated = crate::record_ids(&config, sheet_id);
    assert_eq!(generated.len(), 10);
    let deleted = vec![
        generated[0].clone(),
        generated[3].clone(),
        generated[4].clone(),
        generated[9].clone(),
    ];
    world
        .delete_records(&config, sheet_id, &deleted, EventShape::RecordIds)
        .expect("deleted");
    let added = world
        .add_records(
            &config,
            sheet_id,
            &NewRecords::Count(3),
            EventShape::RecordIds,
        )
        .expect("added");
    let mut expected: Vec<String> = generated
        .iter()
        .filter(|id| !deleted.contains(id))
        .cloned()
        .collect();
    expected.extend(added.record_ids.clone());
    assert_eq!(expected.len(), 9);
    for size in 1..=10 {
        let mut served = Vec::new();
        for number in 1..=10 {
            served.extend(ids(&page(&world, &config, sheet_id, all(number, size))));
        }
        assert_eq!(served, expected, "page size {size}");
    }
    let rows: Vec<String> = world
        .sheet_rows(&config, sheet_id)
        .expect("sheet")
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(rows, expected);
    assert_eq!(
        world
            .counts(&world.find_sheet(&config, sheet_id).expect("sheet").sheet)
            .total,
        9
    );
}

#[test]
fn counts_follow_deletions_fixes_and_invalid_added_records() {
    let config = config(40);
    let mut world = World::new("t".to_owned());
    let sheet_id = "us_sh_w-contacts";
    let scope = world.find_sheet(&config, sheet_id).expect("sheet");
    assert_eq!(
        world.counts(&scope.sheet),
        Counts {
            total: 20,
            error: 2
        }
    );
    let generated = crate::record_ids(&config, sheet_id);
    // Row 9 is invalid (its email); fixing the email makes it valid.
    let mut values = Map::new();
    values.insert("email".to_owned(), json!("fixed@example.com"));
    world
        .edit_records(
            &config,
            sheet_id,
            &[RecordEdit {
                id: generated[9].clone(),
                values,
            }],
            EventShape::RecordIds,
        )
        .expect("edited");
    assert_eq!(
        world.counts(&scope.sheet),
        Counts {
            total: 20,
            error: 1
        }
    );
    // Deleting the other invalid row (19) and a valid one.
    world
        .delete_records(
            &config,
            sheet_id,
            &[generated[19].clone(), generated[0].clone()],
            EventShape::RecordIds,
        )
        .expect("deleted");
    assert_eq!(
        world.counts(&scope.sheet),
        Counts {
            total: 18,
            error: 0
        }
    );
    // Ten generated added records: the tenth is invalid.
    world
        .add_records(
            &config,
            sheet_id,
            &NewRecords::Count(10),
            EventShape::RecordIds,
        )
        .expect("added");
    assert_eq!(
        world.counts(&scope.sheet),
        Counts {
            total: 28,
            error: 1
        }
    );
    let rows = world.sheet_rows(&config, sheet_id).expect("sheet");
    assert_eq!(rows.iter().filter(|row| !row.valid).count(), 1);
}
