//! `[[routes]]`: which events go to which sinks.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::environments::EnvironmentConfig;
use super::filter::{RouteFilter, TopicPattern};
use super::sinks::SinkConfig;
use super::{ConfigError, Parser};

/// `[[routes]]`.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Topics that select the route.
    pub topics: Vec<TopicPattern>,
    /// Sinks the route delivers to.
    pub sinks: Vec<String>,
    /// Names of `[environments.NAME]` the route is limited to; empty = any environment.
    pub environments: Vec<String>,
    /// `[routes.filter]`: every key must match a field of the event.
    pub filter: RouteFilter,
    /// Deliver the whole sheet instead of the records the event names.
    pub snapshot: bool,
    /// What a records or commit event that names no records (no `recordIds`, no commit, no
    /// `dataUrl`) delivers to this route's sinks.
    pub unnamed_records: UnnamedRecords,
}

/// `unnamed_records`: what to do with a records or commit event that names no records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnnamedRecords {
    /// Deliver the whole sheet: every record the event could be about, and more.
    #[default]
    Snapshot,
    /// Fail the delivery, naming what the event lacked.
    Fail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    topics: Spanned<Vec<Spanned<String>>>,
    sinks: Spanned<Vec<Spanned<String>>>,
    environments: Option<Vec<Spanned<String>>>,
    filter: Option<Spanned<toml::Table>>,
    snapshot: Option<bool>,
    unnamed_records: Option<Spanned<String>>,
}

pub(super) fn parse(
    raw: Vec<RawRoute>,
    sinks: &BTreeMap<String, SinkConfig>,
    environments: &BTreeMap<String, EnvironmentConfig>,
    p: &Parser<'_>,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes = Vec::new();
    for (index, route) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("routes[{index}].{k}");
        if route.topics.get_ref().is_empty() {
            return Err(p.locate(
                Some(route.topics.span()),
                Some(&key("topics")),
                "lists no topic".to_owned(),
            ));
        }
        if route.sinks.get_ref().is_empty() {
            return Err(p.locate(
                Some(route.sinks.span()),
                Some(&key("sinks")),
                "lists no sink".to_owned(),
            ));
        }
        let mut names = Vec::new();
        for sink in route.sinks.into_inner() {
            check_defined(&sink, sinks, &key("sinks"), "sink", "defined sinks", p)?;
            if !names.contains(sink.get_ref()) {
                names.push(sink.into_inner());
            }
        }
        let mut route_environments = Vec::new();
        for env in route.environments.unwrap_or_default() {
            let key = key("environments");
            check_defined(&env, environments, &key, "environment", "defined", p)?;
            route_environments.push(env.into_inner());
        }
        let filter = match route.filter {
            None => RouteFilter::default(),
            Some(table) => RouteFilter::from_toml(table.get_ref())
                .map_err(|m| p.locate(Some(table.span()), Some(&key("filter")), m))?,
        };
        let unnamed_records = match route.unnamed_records {
            None => UnnamedRecords::default(),
            Some(v) => match v.get_ref().as_str() {
                "snapshot" => UnnamedRecords::Snapshot,
                "fail" => UnnamedRecords::Fail,
                other => {
                    return Err(p.locate(
                        Some(v.span()),
                        Some(&key("unnamed_records")),
                        format!("`{other}` is not \"snapshot\" or \"fail\""),
                    ));
                }
            },
        };
        routes.push(RouteConfig {
            topics: route
                .topics
                .get_ref()
                .iter()
                .map(|t| TopicPattern::new(t.get_ref()))
                .collect(),
            sinks: names,
            environments: route_environments,
            filter,
            snapshot: route.snapshot.unwrap_or(false),
            unnamed_records,
        });
    }
    Ok(routes)
}

/// Refuses a `name` that is not a key of `defined`, listing the ones that are.
fn check_defined<V>(
    name: &Spanned<String>,
    defined: &BTreeMap<String, V>,
    key: &str,
    what: &str,
    listed_as: &str,
    p: &Parser<'_>,
) -> Result<(), ConfigError> {
    if defined.contains_key(name.get_ref()) {
        return Ok(());
    }
    let known = defined
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    Err(p.locate(
        Some(name.span()),
        Some(key),
        format!(
            "no {what} is named `{}` ({listed_as}: {})",
            name.get_ref(),
            if known.is_empty() { "none" } else { &known }
        ),
    ))
}
