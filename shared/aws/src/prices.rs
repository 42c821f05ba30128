//! The spot prices a deployment keeps, and the planner that uses them.
//!
//! The scale function reads `DescribeSpotPriceHistory` at most once an
//! hour ([`crate::catalog::refresh_spot_prices`], feature `fleet`) and
//! writes the region's current prices to the artifact bucket
//! ([`key`]); the submit function plans with them ([`PricedPlanner`]), and
//! so does `studio plan` on a machine with the deployment's settings. Where
//! there are none (a new deployment, no access), planning ranks spot pools
//! by on-demand price and says so, as before.

use crate::error::AwsError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::sync::{Arc, OnceLock, RwLock};
use studio_core::catalog::SpotPrices;
use studio_core::clock::Timestamp;
use studio_core::contract::SubmitJob;
use studio_core::plan::{CatalogPlanner, Plan, PlanError, Planner};

/// How old a snapshot may be before the scale function reads the market
/// again.
pub const REFRESH_EVERY_MS: i64 = 3_600_000;

/// How long a submit function keeps the prices it read before reading
/// the snapshot again.
pub const RELOAD_EVERY_MS: i64 = 600_000;

/// The snapshot's key in the artifact bucket (kept: no lifecycle rule
/// covers `catalog/`).
pub fn key(region: &str) -> String {
    format!("catalog/spot-prices-{region}.json")
}

/// The region's snapshot, if there is one. S3 answers a missing key with
/// `403 AccessDenied` to a caller without `s3:ListBucket` on the bucket
/// (the functions' roles have none): that is no snapshot as far as this
/// caller can tell; a refresh then writes one, and its `PutObject` fails
/// loudly if access is really denied.
///
/// # Errors
/// [`AwsError`] for a failed read (not for a missing object) or a body
/// that is not a snapshot.
pub async fn load(s3: &Client, bucket: &str, region: &str) -> Result<Option<SpotPrices>, AwsError> {
    match s3.get_object().bucket(bucket).key(key(region)).send().await {
        Ok(o) => {
            let body = o
                .body
                .collect()
                .await
                .map_err(|e| AwsError::sdk("GetObject", e))?
                .into_bytes();
            serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| AwsError::Shape(format!("{}: {e}", key(region))))
        }
        Err(e)
            if e.as_service_error().is_some_and(|e| {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                e.is_no_such_key() || e.code() == Some("AccessDenied")
            }) =>
        {
            tracing::info!(key = %key(region), "no spot price snapshot (missing, or not readable by this role)");
            Ok(None)
        }
        Err(e) => Err(AwsError::sdk("GetObject", e)),
    }
}

/// Writes the region's snapshot.
///
/// # Errors
/// [`AwsError`] when the write fails.
pub async fn store(s3: &Client, bucket: &str, prices: &SpotPrices) -> Result<(), AwsError> {
    let body = serde_json::to_vec(prices).map_err(|e| AwsError::Shape(e.to_string()))?;
    s3.put_object()
        .bucket(bucket)
        .key(key(&prices.region))
        .content_type("application/json")
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| AwsError::sdk("PutObject", e))?;
    Ok(())
}

/// Whether a snapshot read at `fetched_at` is due again at `now`.
pub fn stale(fetched_at: &str, now: Timestamp) -> bool {
    Timestamp::parse_rfc3339(fetched_at).is_none_or(|t| now.0 - t.0 >= REFRESH_EVERY_MS)
}

/// The shipped catalogue with the deployment's spot prices, reloaded at
/// most every [`RELOAD_EVERY_MS`]. The shipped data is read at the first
/// plan or reload, not when the planner is made: parsing it was 0.7 ms of
/// a function's start (release build, 2026-12-07), and `cleanup-empty-group`
/// and most `handle-spot-interruption` invocations never plan.
pub struct PricedPlanner {
    base: OnceLock<Arc<CatalogPlanner>>,
    /// When the snapshot was last read, and the planner with its prices
    /// (`None`: none read yet, the base plans).
    current: RwLock<(Option<Timestamp>, Option<Arc<CatalogPlanner>>)>,
}

impl Default for PricedPlanner {
    /// Over the shipped data, read at the first use.
    fn default() -> Self {
        PricedPlanner {
            base: OnceLock::new(),
            current: RwLock::new((None, None)),
        }
    }
}

impl PricedPlanner {
    fn base(&self) -> &Arc<CatalogPlanner> {
        self.base
            .get_or_init(|| Arc::new(CatalogPlanner::shipped()))
    }

    /// Whether the shipped data has been read.
    pub fn is_loaded(&self) -> bool {
        self.base.get().is_some()
    }

    /// Reads the snapshot again if the last read is older than
    /// [`RELOAD_EVERY_MS`]. A failed read keeps what it had (and says so):
    /// planning goes on at the prices it knew.
    pub async fn reload(&self, s3: &Client, bucket: &str, now: Timestamp) {
        let loaded = self.current.read().expect("not poisoned").0;
        if loaded.is_some_and(|t| now.0 - t.0 < RELOAD_EVERY_MS) {
            return;
        }
        let base = self.base().clone();
        match load(s3, bucket, &base.ec2.region).await {
            Ok(prices) => {
                let next = prices.map(|p| {
                    Arc::new(CatalogPlanner {
                        ec2: Arc::new(base.ec2.with_spot_prices(&p)),
                        gce: base.gce.clone(),
                    })
                });
                *self.current.write().expect("not poisoned") = (Some(now), next);
            }
            Err(e) => {
                tracing::warn!(error = %e, "spot prices unreadable; planning with the ones held");
                self.current.write().expect("not poisoned").0 = Some(now);
            }
        }
    }
}

impl Planner for PricedPlanner {
    fn plan(&self, job: &SubmitJob) -> Result<Plan, PlanError> {
        let held = self.current.read().expect("not poisoned").1.clone();
        match held {
            Some(planner) => planner.plan(job),
            None => self.base().plan(job),
        }
    }
}
