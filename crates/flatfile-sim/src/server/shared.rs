//! What every handler shares: the configuration, the counters, fault injection and the world.

use std::sync::{Mutex, MutexGuard};

use super::faults::Injector;
use super::pages::Pages;
use crate::lock::lock;
use crate::state::World;
use crate::{JobState, SimConfig, SimStats};

pub(super) struct Shared {
    pub(super) config: SimConfig,
    pub(super) stats: Mutex<SimStats>,
    pub(super) faults: Injector,
    /// Rendered page bodies, when [`SimConfig::prerender`] is on.
    pub(super) pages: Option<Pages>,
    world: Mutex<World>,
}

impl Shared {
    pub(super) fn new(config: SimConfig) -> Shared {
        Shared {
            faults: Injector::new(&config),
            pages: config.prerender.then(Pages::default),
            config,
            stats: Mutex::new(SimStats::default()),
            world: Mutex::new(World::new(format!("{:08x}", fastrand::u32(..)))),
        }
    }

    pub(super) fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    pub(super) fn job_state(&self, id: &str) -> Option<JobState> {
        self.world().job_state(id)
    }

    pub(super) fn count_unauthorized(&self) {
        lock(&self.stats).unauthorized += 1;
    }

    /// The configured delay of a data request (legacy rows, Platform records).
    pub(super) async fn page_pause(&self) {
        if !self.config.page_latency.is_zero() {
            tokio::time::sleep(self.config.page_latency).await;
        }
    }
}
