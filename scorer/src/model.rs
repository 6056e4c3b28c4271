//! Pulling a model from the registry, and watching its alias for new versions.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use shared_models::{ModelRef, Registry, Servable};

use crate::log;
use crate::metrics::Metrics;

/// Which model, from which store.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// The model store: file://DIR, a local directory, s3://BUCKET/PREFIX, gs://..., az://...
    /// (credentials from the environment), or memory:// (tests).
    #[arg(long, env = "KML_STORE", default_value = "file://./model-store")]
    pub store: String,
    /// The model: `name` (newest version), `name@version` or `name@alias`. With a name or an
    /// alias, the scorer follows it and hot-reloads new versions.
    #[arg(long, env = "KML_MODEL")]
    pub model: String,
}

impl ModelArgs {
    /// Open the store and parse the reference.
    pub fn open(&self) -> Result<(Registry, ModelRef)> {
        let registry = Registry::open(&self.store)?;
        let r = ModelRef::parse(&self.model)?;
        Ok((registry, r))
    }
}

/// Resolve, fetch (checksums checked) and validate (fingerprint, signature) a model.
pub async fn load(registry: &Registry, r: &ModelRef) -> Result<Servable> {
    let m = registry.resolve(r).await?;
    let b = registry.fetch(&m).await?;
    Ok(Servable::from_bundle(&b)?)
}

/// [`load`] on a throwaway runtime, for commands that are otherwise synchronous.
pub fn load_blocking(args: &ModelArgs) -> Result<Arc<Servable>> {
    let (registry, r) = args.open()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt
        .block_on(load(&registry, &r))
        .with_context(|| format!("cannot load model `{}` from {}", args.model, args.store))?;
    Ok(Arc::new(s))
}

/// Poll the reference every `interval`; send each new, valid version to the scoring loop. A
/// bundle that fails to load or validate is logged and counted, and the old model keeps serving.
pub async fn watch(
    registry: Registry,
    r: ModelRef,
    mut serving: u64,
    interval: Duration,
    tx: Sender<Arc<Servable>>,
    metrics: Arc<Metrics>,
) {
    if matches!(r, ModelRef::Version(..)) {
        return; // a pinned version never changes
    }
    let mut refused = None;
    loop {
        tokio::time::sleep(interval).await;
        let m = match registry.resolve(&r).await {
            Ok(m) => m,
            Err(e) => {
                log::warn("cannot resolve the model", json!({"error": e.to_string()}));
                continue;
            }
        };
        if m.version == serving || Some(m.version) == refused {
            continue;
        }
        let loaded =
            async { Ok::<_, anyhow::Error>(Servable::from_bundle(&registry.fetch(&m).await?)?) };
        match loaded.await {
            Ok(s) => {
                log::info(
                    "new model version loaded",
                    json!({"model": s.id, "previous": serving}),
                );
                serving = s.version;
                refused = None;
                if tx.send(Arc::new(s)).is_err() {
                    return;
                }
            }
            Err(e) => {
                metrics.reload_failures.fetch_add(1, Relaxed);
                log::error(
                    "new model version refused; the old one keeps serving",
                    json!({"model": m.id(), "error": e.to_string(), "serving": serving}),
                );
                refused = Some(m.version);
            }
        }
    }
}
