//! `trainer list`, `trainer show`, `trainer promote`: the registry from the command line.

use std::process::ExitCode;

use shared_models::{ModelRef, Registry};

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
    #[command(flatten)]
    store: StoreArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Every complete version, with metrics and the aliases pointing at it.
pub fn list(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let reg = Registry::open(&args.store)?;
    runtime()?.block_on(async {
        let all = reg.list().await?;
        let mut rows = Vec::new();
        for m in &all {
            let mut aliases = Vec::new();
            for a in ["champion", "challenger"] {
                if reg.alias(&m.name, a).await? == Some(m.version) {
                    aliases.push(a);
                }
            }
            rows.push((m, aliases));
        }
        if args.json {
            let v: Vec<_> = rows
                .iter()
                .map(|(m, a)| serde_json::json!({"name": m.name, "version": m.version, "kind": m.kind, "created_at": m.created_at, "auc": m.metrics.get("auc"), "aliases": a}))
                .collect();
            println!("{}", serde_json::to_string(&v)?);
        } else {
            println!("{:<24}{:>8}  {:<22}{:<26}{:>8}  aliases", "name", "version", "kind", "created", "auc");
            for (m, a) in &rows {
                let auc = m.metrics.get("auc").map_or("-".to_string(), |v| format!("{v:.4}"));
                println!("{:<24}{:>8}  {:<22}{:<26}{:>8}  {}", m.name, m.version, m.kind, m.created_at, auc, a.join(","));
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// One version's manifest.
pub fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let reg = Registry::open(&args.store.store)?;
    let r = ModelRef::parse(&args.model)?;
    let m = runtime()?.block_on(reg.resolve(&r))?;
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

/// Move an alias (promotion, or rollback to an older version).
pub fn promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let reg = Registry::open(&args.store.store)?;
    let r = ModelRef::parse(&args.model)?;
    runtime()?.block_on(async {
        let m = reg.resolve(&r).await?;
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
