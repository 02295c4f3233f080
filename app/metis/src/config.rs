//! The optional TOML config file (`--config`): providers, model aliases, extra models and
//! prices. Flags and environment variables win over the file.
//!
//! ```toml
//! [providers.openai]
//! base_url = "http://127.0.0.1:8000/v1"   # vLLM
//! api_key = "sk-local"                     # or leave it to OPENAI_API_KEY
//! responses_api = false                    # serves /responses natively? (default: only api.openai.com)
//!
//! [providers.vllm-b]                       # any name; `kind` picks the protocol
//! kind = "openai"
//! base_url = "http://127.0.0.1:8001/v1"
//! api_key_env = "VLLM_B_KEY"
//!
//! [providers.mock]
//! enabled = true
//! latency_ms = 20
//!
//! models = ["openai:llama-3.1-8b"]        # extra canonical ids accepted as bare names
//!
//! [aliases]
//! llama = "openai:llama-3.1-8b"
//! haiku = "anthropic:claude-haiku-4-5"
//!
//! [[routes.claude]]                       # alias "claude": one table per deployment
//! provider = "anthropic"
//! model = "claude-haiku-4-5"
//! weight = 3
//!
//! [[routes.claude]]
//! provider = "bedrock"
//! model = "anthropic.claude-haiku-4-5-20251001-v1:0"
//! priority = 1                             # tried when every priority-0 deployment failed
//! rpm = 600
//!
//! [routing]
//! max_attempts = 3
//! deadline_ms = 120000
//!
//! [pricing]
//! version = "2026-11-local"
//!
//! [prices."openai:llama-3.1-8b"]
//! input_per_mtok = 0.0
//! output_per_mtok = 0.0
//! ```

use crate::providers::ProviderSection;
use anyhow::{Context, bail};
use metis_domain::models::Catalog;
use metis_domain::pricing::{Price, PriceTable};
use metis_domain::routing::{BreakerPolicy, Deployment, RoutingPolicy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSection>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub pricing: Option<PricingSection>,
    #[serde(default)]
    pub prices: BTreeMap<String, PriceEntry>,
    /// Aliases served by deployments: `[[routes.ALIAS]]`, one table per deployment.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<DeploymentSection>>,
    #[serde(default)]
    pub routing: RoutingSection,
}

/// One deployment of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSection {
    /// A provider's name: a built-in one with credentials or a `[providers.NAME]` section.
    pub provider: String,
    /// The model id sent upstream.
    pub model: String,
    /// Default `provider:model` (with `#2`, `#3`, … when repeated in the route).
    pub name: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub priority: u32,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

fn one() -> u32 {
    1
}

/// How requests move along routes (`[routing]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Upstream attempts per request across a route's deployments.
    pub max_attempts: u32,
    /// Deadline for an answer head over the whole chain (ms); none by default.
    pub deadline_ms: Option<u64>,
    /// Consecutive failures (429, 5xx, network, time-out) that eject a deployment.
    pub failure_threshold: u32,
    /// First ejection's cool-down (ms), doubled on each re-ejection, ±20 % jitter.
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

impl Default for RoutingSection {
    fn default() -> Self {
        let d = RoutingPolicy::default();
        RoutingSection {
            max_attempts: d.max_attempts,
            deadline_ms: d.deadline_ms,
            failure_threshold: d.breaker.failure_threshold,
            cooldown_ms: d.breaker.base_cooldown_ms,
            max_cooldown_ms: d.breaker.max_cooldown_ms,
        }
    }
}

impl RoutingSection {
    /// The policy, or an error naming the field.
    ///
    /// # Errors
    /// A zero attempt count, threshold or cool-down, or a cap below the first cool-down.
    pub fn policy(&self) -> anyhow::Result<RoutingPolicy> {
        if self.max_attempts == 0 || self.failure_threshold == 0 || self.cooldown_ms == 0 {
            bail!("[routing]: max_attempts, failure_threshold and cooldown_ms must be >= 1");
        }
        if self.max_cooldown_ms < self.cooldown_ms {
            bail!("[routing]: max_cooldown_ms must be >= cooldown_ms");
        }
        if self.deadline_ms == Some(0) {
            bail!("[routing]: deadline_ms must be >= 1 (leave it out for none)");
        }
        Ok(RoutingPolicy {
            max_attempts: self.max_attempts,
            deadline_ms: self.deadline_ms,
            breaker: BreakerPolicy {
                failure_threshold: self.failure_threshold,
                base_cooldown_ms: self.cooldown_ms,
                max_cooldown_ms: self.max_cooldown_ms,
            },
        })
    }
}

impl ConfigFile {
    /// Every route's deployments, named (`provider:model`, `#n` when repeated) and checked.
    ///
    /// # Errors
    /// A route that fails validation, naming it and the deployment.
    pub fn deployments(&self) -> anyhow::Result<Vec<(String, Vec<Deployment>)>> {
        let mut out = Vec::new();
        for (alias, sections) in &self.routes {
            let mut list: Vec<Deployment> = Vec::new();
            for d in sections {
                let name = metis_domain::routing::deployment_name(
                    d.name.as_deref(),
                    &d.provider,
                    &d.model,
                    &list,
                );
                list.push(Deployment {
                    name,
                    provider: d.provider.clone(),
                    model: d.model.clone(),
                    weight: d.weight,
                    priority: d.priority,
                    rpm: d.rpm,
                    tpm: d.tpm,
                });
            }
            metis_domain::routing::validate(alias, &list)
                .map_err(|e| anyhow::anyhow!("[routes.{alias}]: {e}"))?;
            out.push((alias.clone(), list));
        }
        Ok(out)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    pub version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(default)]
    pub cache_read_per_mtok: f64,
    #[serde(default)]
    pub cache_write_per_mtok: f64,
}

impl ConfigFile {
    /// Read and validate a config file; errors name the file and the problem.
    ///
    /// # Errors
    /// Unreadable file, invalid TOML, unknown keys, malformed model ids, negative prices.
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        crate::providers::validate(&cfg.providers)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        cfg.routing
            .policy()
            .and_then(|_| cfg.deployments())
            .with_context(|| format!("invalid config file {}", path.display()))?;
        for id in cfg
            .models
            .iter()
            .chain(cfg.aliases.values())
            .chain(cfg.prices.keys())
        {
            if metis_domain::models::ModelEntry::from_id(id).is_none() {
                bail!(
                    "invalid config file {}: model '{id}' must be a canonical id 'provider:name'",
                    path.display()
                );
            }
        }
        for (id, p) in &cfg.prices {
            for (field, v) in [
                ("input_per_mtok", p.input_per_mtok),
                ("output_per_mtok", p.output_per_mtok),
                ("cache_read_per_mtok", p.cache_read_per_mtok),
                ("cache_write_per_mtok", p.cache_write_per_mtok),
            ] {
                if !v.is_finite() || v < 0.0 {
                    bail!(
                        "invalid config file {}: prices.\"{id}\".{field} must be a finite number >= 0",
                        path.display()
                    );
                }
            }
        }
        Ok(cfg)
    }

    /// The built-in catalog with this file's models and aliases applied.
    #[must_use]
    pub fn catalog(&self) -> Catalog {
        let mut c = Catalog::builtin();
        for m in &self.models {
            c.add_model(m);
        }
        for (alias, target) in &self.aliases {
            c.set_alias(alias, target);
        }
        c
    }

    /// The built-in price table with this file's prices applied. Overrides without an
    /// explicit `[pricing] version` get a derived version, so costs never claim the built-in
    /// version while using other prices.
    #[must_use]
    pub fn prices(&self) -> PriceTable {
        let mut t = PriceTable::builtin();
        for (id, p) in &self.prices {
            t.set(
                id,
                Price {
                    input_per_mtok: p.input_per_mtok,
                    output_per_mtok: p.output_per_mtok,
                    cache_read_per_mtok: p.cache_read_per_mtok,
                    cache_write_per_mtok: p.cache_write_per_mtok,
                },
            );
        }
        if let Some(section) = &self.pricing {
            t.version.clone_from(&section.version);
        } else if !self.prices.is_empty() {
            let digest: String = self
                .prices
                .iter()
                .map(|(id, p)| {
                    format!(
                        "{id}:{}:{}:{}:{}|",
                        p.input_per_mtok,
                        p.output_per_mtok,
                        p.cache_read_per_mtok,
                        p.cache_write_per_mtok
                    )
                })
                .collect();
            let hash = metis_domain::keys::hash_token(&digest);
            t.version = format!("{}+config-{}", t.version, &hash[..12]);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text)?;
        ConfigFile::load(&p)
    }

    #[test]
    fn aliases_models_and_prices_apply() {
        let cfg = parse(
            "models = [\"openai:llama3\"]\n[aliases]\nfast = \"openai:llama3\"\n[prices.\"openai:llama3\"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n",
        )
        .unwrap();
        let c = cfg.catalog();
        assert_eq!(c.resolve("fast", &|_| true).unwrap().id, "openai:llama3");
        let t = cfg.prices();
        assert!(t.version.starts_with("2026-12-07+config-"));
        assert!(t.get("openai:llama3").is_some());
    }

    #[test]
    fn unknown_keys_and_bad_ids_are_refused() {
        assert!(parse("[providers.opneai]\napi_key = \"x\"\n").is_err());
        let err = parse("[aliases]\nfast = \"llama3\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("provider:name"));
    }
}
