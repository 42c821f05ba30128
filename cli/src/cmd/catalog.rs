//! `studio catalog refresh`: the EC2 catalogue, read from the account.

use crate::context::Globals;
use crate::error::{usage, CliError};
#[cfg(feature = "ec2")]
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the EC2 catalogue from DescribeInstanceTypes and spot price history.
    Refresh(RefreshArgs),
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// CSV of on-demand prices (instance_type,region,on_demand_usd_per_hour).
    #[arg(long, value_name = "CSV")]
    pub on_demand_prices: Option<PathBuf>,
    /// Do not read spot prices (for endpoints that serve placeholders).
    #[arg(long)]
    pub no_spot_prices: bool,
    /// Where to write the catalogue (default: $STUDIO_HOME/catalog/ec2-REGION.json).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[cfg(not(feature = "ec2"))]
pub(crate) async fn catalog_refresh(_: &Globals, _: RefreshArgs) -> Result<ExitCode, CliError> {
    Err(usage(crate::error::without_ec2("`studio catalog refresh`")))
}

#[cfg(feature = "ec2")]
pub(crate) async fn catalog_refresh(g: &Globals, a: RefreshArgs) -> Result<ExitCode, CliError> {
    let prices = match &a.on_demand_prices {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("--on-demand-prices {}: {e}", p.display())))?;
            studio_aws::catalog::parse_on_demand_csv(&text, &a.region).map_err(usage)?
        }
        None => Default::default(),
    };
    let client = studio_aws::ec2_client(&a.region).await;
    let cat = studio_aws::catalog::fetch_catalog(&client, &a.region, &prices, !a.no_spot_prices)
        .await
        .context("reading the EC2 catalogue")?;
    let out = a.output.unwrap_or_else(|| {
        g.home
            .join("catalog")
            .join(format!("ec2-{}.json", a.region))
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, studio_aws::catalog::to_json(&cat))?;
    let priced = cat
        .types
        .iter()
        .filter(|t| t.on_demand_micro_usd.is_some())
        .count();
    let spot = cat
        .types
        .iter()
        .filter(|t| t.spot_micro_usd.is_some())
        .count();
    eprintln!(
        "studio: {} instance types in {} ({priced} with on-demand prices, {spot} with spot prices) written to {}",
        cat.types.len(),
        cat.region,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
