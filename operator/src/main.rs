use clap::{Parser, Subcommand};
use sluice_operator::{crdgen, manifests, render};
use std::path::PathBuf;
use std::process::ExitCode;

/// The Sluice operator: QueuePolicy, EgressPool and EgressPath custom
/// resources rendered into the policy every MTA pod hot-loads.
#[derive(Parser)]
#[command(name = "sluice-operator", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CRD manifests generated from the Rust types.
    Crdgen {
        /// Directory to write `<plural>.<group>.yaml` files into; stdout
        /// (one multi-document stream) when unset.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Render the custom resources in a directory's YAML files exactly as
    /// the controller would (for GitOps CI: diff the generated Lua).
    Render {
        /// Directory of YAML files (other kinds in them are skipped).
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
        /// Directory to write the generated files into; stdout when unset.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// The fleet's namespace; objects without one count as in it.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Where the MTA pods mount Secrets (`DIR/<secret>/<key>`).
        #[arg(long, default_value = render::DEFAULT_SECRETS_DIR)]
        secrets_dir: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Crdgen { out } => crdgen_command(out),
        Command::Render {
            dir,
            out,
            namespace,
            secrets_dir,
        } => render_command(&dir, out, &namespace, secrets_dir),
    }
}

fn crdgen_command(out: Option<PathBuf>) -> ExitCode {
    for (name, yaml) in crdgen::crds() {
        match &out {
            Some(dir) => {
                if let Err(e) = std::fs::write(dir.join(&name), yaml) {
                    eprintln!("{}: {e}", dir.join(&name).display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}

fn render_command(
    dir: &std::path::Path,
    out: Option<PathBuf>,
    namespace: &str,
    secrets_dir: String,
) -> ExitCode {
    let (inputs, errors) = manifests::read_dir(dir, namespace);
    for e in &errors {
        eprintln!("error: {e}");
    }
    let rendered = render::render(&inputs, &render::Options { secrets_dir });
    for (name, content) in &rendered.files {
        match &out {
            Some(dir) => {
                if let Err(e) = std::fs::write(dir.join(name), content) {
                    eprintln!("{}: {e}", dir.join(name).display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("{content}"),
        }
    }
    let mut failed = !errors.is_empty();
    for (object, rejection) in rendered.rejected() {
        eprintln!(
            "error: {}: {object}: {} ({})",
            dir.display(),
            rejection.message,
            rejection.reason
        );
        failed = true;
    }
    eprintln!("config hash {}", rendered.hash);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
