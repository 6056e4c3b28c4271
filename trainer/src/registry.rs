//! `trainer list`, `trainer show`, `trainer promote`: the registry from the command line.
//!
//! None of them creates anything but an alias: a store directory that does not exist is an
//! error. `show` and `promote` load the bundle exactly as the scorer does (checksums, manifest,
//! fitted state, model sanity, signature), so a bundle the scorer would refuse is reported,
//! exit code 2, and never promoted; `list --verify` does the same for every version.

use std::process::ExitCode;

use anyhow::bail;
use shared_models::{Manifest, ModelRef, Registry, Servable};

/// Where the models are.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The model store: file://DIR (default ./model-store), s3://BUCKET/PREFIX, gs://..., az://...
    /// (credentials from the environment), or memory://.
    #[arg(long, env = "KML_STORE", default_value = "file://./model-store")]
    store: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `trainer list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Also fetch every version and load it as the scorer would (checksums, model sanity,
    /// signature); exit 2 if any fails.
    #[arg(long)]
    verify: bool,
}

/// Arguments of `trainer show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// name, name@version or name@alias.
    model: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `trainer promote`.
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// name@version (or name@alias, or name for the newest) to point the alias at.
    model: String,
    /// The alias to move, e.g. champion.
    #[arg(long)]
    alias: String,
    /// Move the alias without loading the bundle first, even to one the scorer will refuse
    /// (to test a scorer's refusal, or to point at a bundle whose store this build cannot read).
    #[arg(long)]
    no_verify: bool,
    #[command(flatten)]
    store: StoreArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Fetch a version (every file against its sha256) and load it as the scorer does.
async fn verify(reg: &Registry, m: &Manifest) -> anyhow::Result<()> {
    Servable::from_bundle(&reg.fetch(m).await?)?;
    Ok(())
}

/// One version in the listing: its manifest, or why it cannot be read or served.
struct Row {
    id: String,
    manifest: Option<Manifest>,
    aliases: Vec<&'static str>,
    error: Option<String>,
}

/// Every complete version, with metrics and the aliases pointing at it. A version whose
/// manifest cannot be read (or, with `--verify`, whose bundle fails to load) is listed with its
/// error, the others as usual, and the exit code is 2.
pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let reg = Registry::open(&args.store.store)?;
    let rows = runtime()?.block_on(async {
        let mut rows = Vec::new();
        for name in reg.names().await? {
            for v in reg.versions(&name).await? {
                let id = format!("{name}@{v}");
                let m = match reg.manifest(&name, v).await {
                    Ok(m) => m,
                    Err(e) => {
                        let error = Some(e.to_string());
                        rows.push(Row {
                            id,
                            manifest: None,
                            aliases: Vec::new(),
                            error,
                        });
                        continue;
                    }
                };
                let mut aliases = Vec::new();
                for a in ["champion", "challenger"] {
                    if reg.alias(&name, a).await? == Some(v) {
                        aliases.push(a);
                    }
                }
                let error = match args.verify {
                    true => verify(&reg, &m).await.err().map(|e| format!("{e:#}")),
                    false => None,
                };
                rows.push(Row {
                    id,
                    manifest: Some(m),
                    aliases,
                    error,
                });
            }
        }
        anyhow::Ok(rows)
    })?;
    if args.store.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| match &r.manifest {
                Some(m) => serde_json::json!({"name": m.name, "version": m.version, "kind": m.kind, "created_at": m.created_at, "auc": m.metrics.get("auc"), "aliases": r.aliases, "error": r.error}),
                None => serde_json::json!({"id": r.id, "error": r.error}),
            })
            .collect();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{:<24}{:>8}  {:<22}{:<26}{:>8}  aliases",
            "name", "version", "kind", "created", "auc"
        );
        for r in &rows {
            if let Some(m) = &r.manifest {
                let auc = m
                    .metrics
                    .get("auc")
                    .map_or("-".to_string(), |v| format!("{v:.4}"));
                println!(
                    "{:<24}{:>8}  {:<22}{:<26}{:>8}  {}",
                    m.name,
                    m.version,
                    m.kind,
                    m.created_at,
                    auc,
                    r.aliases.join(",")
                );
            }
        }
    }
    let bad: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    for r in &bad {
        eprintln!("{}: {}", r.id, r.error.as_deref().unwrap_or_default());
    }
    if !bad.is_empty() {
        bail!(
            "{} of {} versions {}",
            bad.len(),
            rows.len(),
            if args.verify {
                "cannot be read or served"
            } else {
                "cannot be read"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One version's manifest, once the bundle has loaded as the scorer would load it.
pub fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let reg = Registry::open(&args.store.store)?;
    let r = ModelRef::parse(&args.model)?;
    let m = runtime()?.block_on(async {
        let m = reg.resolve(&r).await?;
        verify(&reg, &m).await?;
        anyhow::Ok(m)
    })?;
    println!(
        "{}",
        if args.store.json {
            serde_json::to_string(&m)?
        } else {
            serde_json::to_string_pretty(&m)?
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Move an alias (promotion, or rollback to an older version) to a version that loads.
pub fn promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let reg = Registry::open(&args.store.store)?;
    let r = ModelRef::parse(&args.model)?;
    runtime()?.block_on(async {
        let m = reg.resolve(&r).await?;
        if !args.no_verify {
            verify(&reg, &m).await.map_err(|e| {
                e.context(format!(
                    "refusing to point {}@{} at {} (--no-verify moves it anyway)",
                    m.name,
                    args.alias,
                    m.id()
                ))
            })?;
        }
        let before = reg.alias(&m.name, &args.alias).await?;
        reg.set_alias(&m.name, &args.alias, m.version).await?;
        let was = before.map_or("unset".to_string(), |v| format!("version {v}"));
        if args.store.json {
            println!("{}", serde_json::json!({"name": m.name, "alias": args.alias, "version": m.version, "previous": before}));
        } else {
            println!("{}@{} -> version {} (was {was})", m.name, args.alias, m.version);
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
