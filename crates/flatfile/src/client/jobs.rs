//! Reading a Platform job (`GET /v1/jobs/{id}`), for events whose context does not name what
//! the job is about, and to tell the parts of a multi-part job from their parent.

use serde::Deserialize;

use super::{Api, FlatfileClient, HttpMethod, endpoint};
use crate::error::ApiError;

/// What flatsync needs to know of a Platform job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// Job id, `us_jb_…`.
    pub id: String,
    /// `type`: `workbook`, `sheet`, `space`, `file`, … (lower-case as sent).
    pub job_type: Option<String>,
    /// `operation`, e.g. `submitActionFg`.
    pub operation: Option<String>,
    /// `source`: the id of the workbook, sheet, file, … the job acts on.
    pub source: Option<String>,
    /// `parentId`: set on the parts of a multi-part job.
    pub parent_id: Option<String>,
    /// `partData.part` or `part`: this part's number, when the job is a part.
    pub part: Option<u64>,
    /// `partData.total`: how many parts the parent was split into, when known.
    pub parts_total: Option<u64>,
    /// `status`: `created`, `planning`, `scheduled`, `ready`, `executing`, `complete`,
    /// `failed`, `canceled` (as sent).
    pub status: Option<String>,
}

impl JobInfo {
    /// Whether the job is one part of a multi-part job: it has a parent or a part number.
    pub fn is_part(&self) -> bool {
        self.parent_id.is_some() || self.part.is_some()
    }

    /// Whether the job has ended (`complete`, `failed` or `canceled`): completing or failing
    /// it again would replace the outcome its user was shown.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("complete" | "failed" | "canceled")
        )
    }

    /// The job's name as `job:ready` payloads spell it, `<type>:<operation>`.
    pub fn name(&self) -> Option<String> {
        Some(format!(
            "{}:{}",
            self.job_type.as_deref()?,
            self.operation.as_deref()?
        ))
    }
}

impl FlatfileClient {
    /// `GET /v1/jobs/{id}` → [`JobInfo`]. Unknown fields are ignored; a missing field is `None`.
    pub async fn job(&self, job_id: &str) -> Result<JobInfo, ApiError> {
        let url = endpoint(&self.inner.api_base, &["jobs", job_id])?;
        self.execute(HttpMethod::Get, Api::Platform, "job", url, None, job_info)
            .await
    }
}

fn job_info(body: &[u8]) -> Result<JobInfo, serde_json::Error> {
    #[derive(Deserialize)]
    struct Envelope {
        data: WireJob,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct WireJob {
        id: String,
        #[serde(default, rename = "type")]
        job_type: Option<String>,
        #[serde(default)]
        operation: Option<String>,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        parent_id: Option<String>,
        #[serde(default)]
        part: Option<u64>,
        #[serde(default)]
        part_data: Option<serde_json::Value>,
        #[serde(default)]
        status: Option<String>,
    }
    let job = serde_json::from_slice::<Envelope>(body)?.data;
    let part_data = |key: &str| {
        job.part_data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(serde_json::Value::as_u64)
    };
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(JobInfo {
        part: job.part.or_else(|| part_data("part")),
        parts_total: part_data("total"),
        id: job.id,
        job_type: non_empty(job.job_type),
        operation: non_empty(job.operation),
        source: non_empty(job.source),
        parent_id: non_empty(job.parent_id),
        status: non_empty(job.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_told_by_its_parent_or_part_number() {
        let fixture = include_bytes!("../../testdata/job-response.json");
        let job = job_info(fixture).expect("the fixture parses");
        assert!(!job.is_part(), "{job:?}");
        assert!(job.name().is_some(), "{job:?}");

        let part = job_info(
            br#"{"data":{"id":"us_jb_2","type":"workbook","operation":"submitActionFg","source":"us_wb_1",
                 "parentId":"us_jb_1","partData":{"part":3,"total":4},"status":"ready"}}"#,
        )
        .expect("parses");
        assert!(part.is_part());
        assert_eq!((part.part, part.parts_total), (Some(3), Some(4)));
        assert_eq!(part.name().as_deref(), Some("workbook:submitActionFg"));
        assert_eq!(part.source.as_deref(), Some("us_wb_1"));
        assert!(!part.is_finished(), "ready: {part:?}");
        for status in ["complete", "failed", "canceled"] {
            let body = format!(r#"{{"data":{{"id":"us_jb_4","status":"{status}"}}}}"#);
            let job = job_info(body.as_bytes()).expect("parses");
            assert!(job.is_finished(), "{status}: {job:?}");
        }

        let bare = job_info(br#"{"data":{"id":"us_jb_3","source":""}}"#).expect("parses");
        assert_eq!((bare.source.as_deref(), bare.name()), (None, None));
    }
}
