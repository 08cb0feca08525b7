//! Per-agency admission on the mTLS listener: each agency (the member its
//! client certificate names) gets a request rate and a number of requests
//! in flight (`hub_core::limits`); over either, the request is answered 429
//! with `Retry-After` before any work is done for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hub_core::ids::Member;
use hub_core::limits::{Admission, Quota, Throttled};

use crate::http::ApiError;
use crate::identity::Identity;

/// Past this many agencies tracked, idle ones are forgotten.
const TRACKED_BEFORE_SWEEP: usize = 4096;

/// Every agency's admission state.
pub struct AgencyLimits {
    quota: Quota,
    origin: Instant,
    agencies: Mutex<HashMap<Member, Admission>>,
}

impl AgencyLimits {
    pub fn new(quota: Quota) -> Arc<Self> {
        Arc::new(Self {
            quota,
            origin: Instant::now(),
            agencies: Mutex::new(HashMap::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn admit(self: &Arc<Self>, member: &Member) -> Result<InFlight, Throttled> {
        let now = self.now_ms();
        let mut agencies = self
            .agencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if agencies.len() > TRACKED_BEFORE_SWEEP {
            agencies.retain(|_, a| !a.idle(&self.quota, now));
        }
        agencies
            .entry(member.clone())
            .or_insert_with(|| Admission::new(&self.quota, now))
            .admit(&self.quota, now)?;
        Ok(InFlight {
            limits: self.clone(),
            member: member.clone(),
        })
    }
}

/// An admitted request; dropping it (the handler finished or was
/// cancelled) frees its place.
struct InFlight {
    limits: Arc<AgencyLimits>,
    member: Member,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut agencies = self
            .limits
            .agencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = agencies.get_mut(&self.member) {
            a.finish();
        }
    }
}

/// The middleware: requests without an identity pass (their handlers
/// refuse them); an agency over its quota gets 429.
pub async fn admit(
    State(limits): State<Arc<AgencyLimits>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(Identity(member)) = request.extensions().get::<Identity>().cloned() else {
        return Ok(next.run(request).await);
    };
    let held = limits.admit(&member).map_err(|t| {
        tracing::debug!(%member, ?t, "throttled");
        ApiError::Throttled(t)
    })?;
    let response = next.run(request).await;
    drop(held);
    Ok(response)
}
