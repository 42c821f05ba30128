//! `baseline`: the smallest `lambda_runtime` function, which answers with
//! the event it got. Not deployed: `scripts/bench` builds it as it builds
//! Studio's functions (`cargo lambda build --release`) and serves it one
//! event, so their cold starts, sizes and memory have a reference measured
//! the same way on the same machine.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|e: LambdaEvent<serde_json::Value>| async move {
        Ok::<_, Error>(e.payload)
    }))
    .await
}
