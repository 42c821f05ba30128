//! [`JobStore`] on DynamoDB: two tables, jobs and pools.
//!
//! Guarantees: a job is created at most once (`attribute_not_exists(id)`);
//! every update is a conditional put on the `version` the writer read, and a
//! lost race is [`PortError::Conflict`] (mapped from
//! `ConditionalCheckFailedException`), never an error string. Reads of one
//! record are strongly consistent; the index queries (jobs by instance, by
//! pool and state) are eventually consistent, as GSIs are. Terminal jobs get
//! an `expires_at` for the table's TTL.
//!
//! Jobs table: key `id`; GSIs `by-instance` (`instance`, sparse: only jobs
//! with a machine), `by-pool-state` (`pool`, `state`) and `by-created`
//! (`listing`, `created_key`, keys only): the newest-first listing of
//! `studio ui`, its partition spread over [`LISTING_SHARDS`] values so that
//! no one index partition takes every job's creation. Pools table: key `key`.

use crate::error::AwsError;
use crate::sdk::LazyClient;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, KeysAndAttributes, Projection, ProjectionType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::time::Duration;
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::job::{Job, JobState};
use studio_core::pool::{Pool, PoolState};
use studio_core::ports::{
    listing_key, merge_pages, Created, JobPage, JobQuery, JobStore, PortError,
};

const PORT: &str = "dynamodb";
type Item = HashMap<String, AttributeValue>;

/// How many partitions of the `by-created` index jobs are spread over; a
/// listing queries each and merges them. A partition of an index takes at
/// most 1,000 write units a second, and a throttled index throttles the
/// table's writes too; the index is written once per job (its keys never
/// change), so four keep bursts of thousands of submits a second clear.
pub const LISTING_SHARDS: u32 = 4;

/// The `by-created` partition of a job: a stable hash of its id.
fn listing_shard(id: &JobId) -> String {
    let h = id.as_str().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("jobs#{}", h % LISTING_SHARDS)
}

/// How long a finished, failed or cancelled job stays before TTL removes it.
pub const TERMINAL_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct DynamoStore {
    client: LazyClient<Client>,
    jobs: String,
    pools: String,
}

fn sdk<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> PortError {
    move |e| PortError::backend(PORT, AwsError::sdk(op, e))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(item: &Item) -> Result<T, PortError> {
    let rec = item
        .get("record")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| PortError::backend(PORT, AwsError::Shape("item without a record".into())))?;
    serde_json::from_str(rec).map_err(|e| PortError::backend(PORT, e))
}

fn job_item(job: &Job) -> Item {
    let mut item = Item::from([
        ("id".to_string(), s(job.id.as_str())),
        ("state".to_string(), s(job.state.as_str())),
        ("version".to_string(), n(job.version)),
        ("pool".to_string(), s(job.pool.as_str())),
        ("created_at".to_string(), n(job.created_at.0)),
        ("listing".to_string(), s(listing_shard(&job.id))),
        ("created_key".to_string(), s(listing_key(job))),
        (
            "record".to_string(),
            s(serde_json::to_string(job).expect("jobs serialize")),
        ),
    ]);
    if let Some(i) = &job.instance {
        item.insert("instance".into(), s(i.as_str()));
    }
    if job.state.is_terminal() {
        let expires = job.updated_at.plus(TERMINAL_TTL).0 / 1000;
        item.insert("expires_at".into(), n(expires));
    }
    item
}

fn pool_item(pool: &Pool) -> Item {
    Item::from([
        ("key".to_string(), s(pool.key.as_str())),
        ("state".to_string(), s(pool.state.as_str())),
        ("version".to_string(), n(pool.version)),
        (
            "record".to_string(),
            s(serde_json::to_string(pool).expect("pools serialize")),
        ),
    ])
}

impl DynamoStore {
    pub fn new(
        client: impl Into<LazyClient<Client>>,
        jobs_table: impl Into<String>,
        pools_table: impl Into<String>,
    ) -> Self {
        DynamoStore {
            client: client.into(),
            jobs: jobs_table.into(),
            pools: pools_table.into(),
        }
    }

    /// Creates both tables (on-demand billing, the GSIs, TTL on `expires_at`)
    /// unless they exist. For tests and first set-up; production tables come
    /// from the infra template.
    ///
    /// # Errors
    /// Port errors from DynamoDB.
    pub async fn ensure_tables(&self) -> Result<(), PortError> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("complete attribute definition")
        };
        let key = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
                .expect("complete key schema")
        };
        let all = Projection::builder()
            .projection_type(ProjectionType::All)
            .build();
        let keys_only = Projection::builder()
            .projection_type(ProjectionType::KeysOnly)
            .build();
        let gsi = |name: &str, keys: Vec<KeySchemaElement>| {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .set_key_schema(Some(keys))
                .projection(if name == "by-created" {
                    keys_only.clone()
                } else {
                    all.clone()
                })
                .build()
                .expect("complete index")
        };
        let jobs = self
            .client
            .create_table()
            .table_name(&self.jobs)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("id"))
            .attribute_definitions(attr("instance"))
            .attribute_definitions(attr("pool"))
            .attribute_definitions(attr("state"))
            .attribute_definitions(attr("listing"))
            .attribute_definitions(attr("created_key"))
            .key_schema(key("id", KeyType::Hash))
            .global_secondary_indexes(gsi("by-instance", vec![key("instance", KeyType::Hash)]))
            .global_secondary_indexes(gsi(
                "by-pool-state",
                vec![key("pool", KeyType::Hash), key("state", KeyType::Range)],
            ))
            .global_secondary_indexes(gsi(
                "by-created",
                vec![
                    key("listing", KeyType::Hash),
                    key("created_key", KeyType::Range),
                ],
            ))
            .send()
            .await;
        match jobs {
            Ok(_) => {
                self.client
                    .update_time_to_live()
                    .table_name(&self.jobs)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .enabled(true)
                            .attribute_name("expires_at")
                            .build()
                            .expect("complete TTL specification"),
                    )
                    .send()
                    .await
                    .map_err(sdk("UpdateTimeToLive"))?;
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(e) => return Err(sdk("CreateTable")(e)),
        }
        let pools = self
            .client
            .create_table()
            .table_name(&self.pools)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("key"))
            .key_schema(key("key", KeyType::Hash))
            .send()
            .await;
        match pools {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk("CreateTable")(e)),
        }
    }

    async fn get(&self, table: &str, key: &str, value: &str) -> Result<Option<Item>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .key(key, s(value))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("GetItem"))?;
        Ok(out.item)
    }

    /// Conditional put; `Ok(false)` when the condition failed.
    async fn put_if(
        &self,
        table: &str,
        item: Item,
        condition: &str,
        names: &[(&str, &str)],
        values: Item,
    ) -> Result<bool, PortError> {
        let mut req = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression(condition);
        if !values.is_empty() {
            req = req.set_expression_attribute_values(Some(values));
        }
        for (k, v) in names {
            req = req.expression_attribute_names(*k, *v);
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk("PutItem")(e)),
        }
    }

    async fn query_index(
        &self,
        index: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Item,
    ) -> Result<Vec<Item>, PortError> {
        let names: HashMap<String, String> = names
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pages = self
            .client
            .query()
            .table_name(&self.jobs)
            .index_name(index)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            out.extend(page.map_err(sdk("Query"))?.items.unwrap_or_default());
        }
        Ok(out)
    }

    /// Up to `q.limit` jobs of one `by-created` partition, newest first.
    /// The index holds keys only (a job is written to it once, when it is
    /// created; a projection of the record would copy every later write of
    /// the job, each a write unit per KB): each page of keys is read with
    /// BatchGetItem and filtered here, page after page until
    /// more than `limit` match or the partition ends.
    async fn page_shard(&self, shard: &str, q: &JobQuery) -> Result<JobPage, PortError> {
        let limit = q.limit.max(1) as usize;
        let mut names = HashMap::from([("#l".to_string(), "listing".to_string())]);
        let mut values = Item::from([(":l".to_string(), s(shard))]);
        let mut condition = "#l = :l".to_string();
        if let Some(b) = &q.before {
            names.insert("#k".into(), "created_key".into());
            values.insert(":b".into(), s(b.as_str()));
            condition.push_str(" AND #k < :b");
        }
        let mut jobs = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.jobs)
                .index_name("by-created")
                .key_condition_expression(&condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .limit(limit as i32 + 1)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk("Query"))?;
            let ids: Vec<String> = out
                .items()
                .iter()
                .filter_map(|i| i.get("id")?.as_s().ok().cloned())
                .collect();
            jobs.extend(
                self.get_jobs(&ids)
                    .await?
                    .into_iter()
                    .filter(|j| q.matches(j)),
            );
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if jobs.len() > limit || start.is_none() {
                break;
            }
        }
        let more = jobs.len() > limit || start.is_some();
        jobs.truncate(limit);
        let next = more.then(|| jobs.last().map(listing_key)).flatten();
        Ok(JobPage { jobs, next })
    }

    /// The jobs `ids` names, in that order, read with BatchGetItem (100
    /// keys a call; keys DynamoDB leaves unprocessed are asked again, with
    /// backoff when a call read none). Eventually consistent, at half the read
    /// units: a listing is a look, and the index it came from lags anyway.
    /// A job TTL removed since its key was listed is left out.
    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, PortError> {
        let mut found: HashMap<String, Job> = HashMap::new();
        for chunk in ids.chunks(100) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|id| Item::from([("id".to_string(), s(id.as_str()))]))
                .collect();
            // Backoff only when a call read nothing: a partial answer (the
            // response's size) is asked again at once.
            let mut idle = 0u32;
            while !keys.is_empty() {
                let asked = keys.len();
                let wanted = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(false)
                    .build()
                    .map_err(|e| PortError::backend(PORT, e))?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.jobs, wanted)
                    .send()
                    .await
                    .map_err(sdk("BatchGetItem"))?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&self.jobs))
                    .unwrap_or_default()
                {
                    let job: Job = decode(&item)?;
                    found.insert(job.id.to_string(), job);
                }
                keys = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.jobs))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if !keys.is_empty() && keys.len() == asked {
                    idle += 1;
                    if idle > 6 {
                        return Err(PortError::backend(
                            PORT,
                            AwsError::Shape(format!(
                                "BatchGetItem read none of {asked} keys in {idle} tries (throttled)"
                            )),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(25 << idle)).await;
                }
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn scan(&self, table: &str) -> Result<Vec<Item>, PortError> {
        let mut pages = self
            .client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            out.extend(page.map_err(sdk("Scan"))?.items.unwrap_or_default());
        }
        Ok(out)
    }
}

fn newest_first(mut jobs: Vec<Job>) -> Vec<Job> {
    jobs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    jobs
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn create_job(&self, job: &Job) -> Result<Created<Job>, PortError> {
        if self
            .put_if(
                &self.jobs,
                job_item(job),
                "attribute_not_exists(id)",
                &[],
                Item::new(),
            )
            .await?
        {
            return Ok(Created::New(job.clone()));
        }
        let item = self
            .get(&self.jobs, "id", job.id.as_str())
            .await?
            .ok_or_else(|| PortError::NotFound(format!("job {}", job.id)))?;
        Ok(Created::Existing(decode(&item)?))
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, PortError> {
        self.get(&self.jobs, "id", id.as_str())
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    async fn update_job(&self, job: &Job) -> Result<Job, PortError> {
        let mut next = job.clone();
        next.version = job.version + 1;
        let ok = self
            .put_if(
                &self.jobs,
                job_item(&next),
                "attribute_exists(id) AND #v = :v",
                &[("#v", "version")],
                Item::from([(":v".to_string(), n(job.version))]),
            )
            .await?;
        if ok {
            return Ok(next);
        }
        match self.get(&self.jobs, "id", job.id.as_str()).await? {
            Some(_) => Err(PortError::Conflict),
            None => Err(PortError::NotFound(format!("job {}", job.id))),
        }
    }

    async fn list_jobs(
        &self,
        pool: Option<&PoolKey>,
        states: &[JobState],
    ) -> Result<Vec<Job>, PortError> {
        let Some(pool) = pool else {
            let jobs: Vec<Job> = self
                .scan(&self.jobs)
                .await?
                .iter()
                .map(decode)
                .collect::<Result<_, _>>()?;
            return Ok(newest_first(
                jobs.into_iter()
                    .filter(|j: &Job| states.is_empty() || states.contains(&j.state))
                    .collect(),
            ));
        };
        let mut items = Vec::new();
        if states.is_empty() {
            items = self
                .query_index(
                    "by-pool-state",
                    "#p = :p",
                    &[("#p", "pool")],
                    Item::from([(":p".to_string(), s(pool.as_str()))]),
                )
                .await?;
        } else {
            for st in states {
                items.extend(
                    self.query_index(
                        "by-pool-state",
                        "#p = :p AND #s = :s",
                        &[("#p", "pool"), ("#s", "state")],
                        Item::from([
                            (":p".to_string(), s(pool.as_str())),
                            (":s".to_string(), s(st.as_str())),
                        ]),
                    )
                    .await?,
                );
            }
        }
        Ok(newest_first(
            items.iter().map(decode).collect::<Result<_, _>>()?,
        ))
    }

    async fn page_jobs(&self, q: &JobQuery) -> Result<JobPage, PortError> {
        let mut pages = Vec::new();
        for shard in 0..LISTING_SHARDS {
            pages.push(self.page_shard(&format!("jobs#{shard}"), q).await?);
        }
        Ok(merge_pages(pages, q.limit))
    }

    async fn jobs_on_instance(&self, instance: &InstanceId) -> Result<Vec<Job>, PortError> {
        let items = self
            .query_index(
                "by-instance",
                "#i = :i",
                &[("#i", "instance")],
                Item::from([(":i".to_string(), s(instance.as_str()))]),
            )
            .await?;
        // The index may lag; the record itself is read consistently.
        let mut out = Vec::new();
        for item in &items {
            let job: Job = decode(item)?;
            if let Some(fresh) = self.get_job(&job.id).await? {
                if fresh.instance.as_ref() == Some(instance) {
                    out.push(fresh);
                }
            }
        }
        Ok(out)
    }

    async fn get_pool(&self, key: &PoolKey) -> Result<Option<Pool>, PortError> {
        self.get(&self.pools, "key", key.as_str())
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    async fn create_pool(&self, pool: &Pool) -> Result<Created<Pool>, PortError> {
        if self
            .put_if(
                &self.pools,
                pool_item(pool),
                "attribute_not_exists(#k)",
                &[("#k", "key")],
                Item::new(),
            )
            .await?
        {
            return Ok(Created::New(pool.clone()));
        }
        let item = self
            .get(&self.pools, "key", pool.key.as_str())
            .await?
            .ok_or_else(|| PortError::NotFound(format!("pool {}", pool.key)))?;
        Ok(Created::Existing(decode(&item)?))
    }

    async fn update_pool(&self, pool: &Pool) -> Result<Pool, PortError> {
        let mut next = pool.clone();
        next.version = pool.version + 1;
        let ok = self
            .put_if(
                &self.pools,
                pool_item(&next),
                "#v = :v",
                &[("#v", "version")],
                Item::from([(":v".to_string(), n(pool.version))]),
            )
            .await?;
        if ok {
            Ok(next)
        } else {
            Err(PortError::Conflict)
        }
    }

    async fn live_pools(&self) -> Result<Vec<Pool>, PortError> {
        let mut pools: Vec<Pool> = self
            .scan(&self.pools)
            .await?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        pools.retain(|p| p.state != PoolState::Deleted);
        pools.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(pools)
    }
}
