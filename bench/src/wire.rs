//! The wire floor: the same pages the daemon reads, read raw (no parsing, bodies dropped) over
//! as many keep-alive connections as the daemon has pages in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::error::BenchError;
use crate::http;

/// Reads every URL once, `connections` at a time, each with `header`; the wall seconds.
pub(crate) fn read(
    urls: &[String],
    header: (&str, &str),
    connections: usize,
) -> Result<f64, BenchError> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<(), BenchError> {
                    let agent = http::agent();
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(url) = urls.get(at) else {
                            return Ok(());
                        };
                        read_one(&agent, url, header)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("a wire reader panicked"))
    })?;
    Ok(started.elapsed().as_secs_f64())
}

fn read_one(agent: &ureq::Agent, url: &str, header: (&str, &str)) -> Result<(), BenchError> {
    let what = || format!("GET {url}");
    let mut response = agent
        .get(url)
        .header(header.0, header.1)
        .call()
        .map_err(|e| BenchError::Http {
            what: what(),
            message: e.to_string(),
        })?;
    if response.status().as_u16() != 200 {
        return Err(BenchError::Http {
            what: what(),
            message: format!("answered {}", response.status()),
        });
    }
    let mut body = response.body_mut().with_config().limit(u64::MAX).reader();
    std::io::copy(&mut body, &mut std::io::sink()).map_err(|e| BenchError::Http {
        what: what(),
        message: e.to_string(),
    })?;
    Ok(())
}
