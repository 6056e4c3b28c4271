//! Pulling a model from the registry, and watching its alias for new versions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use shared_models::{ModelRef, Registry, Servable};

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

/// Load the `--shadow` models of `champion` from `store`. One that cannot be loaded is left
/// out (logged): a shadow never stops the champion. One that computes other features than the
/// champion keeps window state of its own, except in watermark order (`watermark`), where it
/// is refused (a shadow there scores the rows the champion releases).
pub async fn load_shadows(
    store: &str,
    names: &[String],
    champion: &Servable,
    watermark: bool,
) -> Result<Vec<Arc<Servable>>> {
    let mut out: Vec<Arc<Servable>> = Vec::new();
    for name in names {
        let m = ModelArgs {
            store: store.to_string(),
            model: name.clone(),
        };
        let loaded = match m.open() {
            Ok((registry, r)) => load(&registry, &r).await,
            Err(e) => Err(e),
        };
        let m = match loaded {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(
                    shadow = %name, error = %format!("{e:#}"),
                    "cannot load the shadow; scoring without it"
                );
                continue;
            }
        };
        let (fp, champion_fp) = (
            crate::score::state_fingerprint(&m),
            crate::score::state_fingerprint(champion),
        );
        if fp != champion_fp && watermark {
            anyhow::bail!(
                "--shadow {name}: {} computes other features than the champion {} (pipeline or \
                 tables differ: state fingerprint {fp} against {champion_fp}); in watermark \
                 order a shadow scores the rows the champion releases, so it must compute the \
                 same features (use --order arrival, or `scorer replay --shadow`, which scores \
                 any model on history)",
                m.id,
                champion.id
            );
        }
        if out.iter().any(|o| o.id == m.id) || m.id == champion.id {
            anyhow::bail!(
                "--shadow {name}: {} is given twice (or is the champion)",
                m.id
            );
        }
        tracing::info!(
            shadow = %m.id, champion = %champion.id, own_state = fp != champion_fp,
            "shadow loaded"
        );
        out.push(Arc::new(m));
    }
    Ok(out)
}

/// Poll the reference every `interval`; hand each new, valid version to `swap`, which returns
/// false when nobody listens any more. Every failed attempt (alias unresolvable, bundle
/// unreadable or refused) is logged and counted in `kml_model_reload_failures_total`, and the
/// old model keeps serving; a refused version is not retried until the alias moves.
pub async fn watch(
    registry: Registry,
    r: ModelRef,
    mut serving: u64,
    interval: Duration,
    mut swap: impl FnMut(Arc<Servable>) -> bool,
    metrics: Metrics,
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
                metrics.reload_failures.inc();
                tracing::warn!(error = %e, serving, "cannot resolve the model; the old one keeps serving");
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
                tracing::info!(model = %s.id, previous = serving, "new model version loaded");
                serving = s.version;
                refused = None;
                if !swap(Arc::new(s)) {
                    return;
                }
            }
            Err(e) => {
                metrics.reload_failures.inc();
                tracing::error!(
                    model = %m.id(), error = %format!("{e:#}"), serving,
                    "new model version refused; the old one keeps serving"
                );
                refused = Some(m.version);
            }
        }
    }
}
