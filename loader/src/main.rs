//! `backendtls-loader`: see README for the full CLI reference.

use backendtls_loader::{pipeline, resolve, serve, source::ConfigDir, xds};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use xds::translate::{Delivery, TranslateOptions};

#[derive(Parser)]
#[command(
    name = "backendtls-loader",
    version,
    about = "Gateway API BackendTLSPolicy control plane for stock Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Translation {
    /// Directory of Kubernetes YAML (any file names, multi-document files, subdirectories).
    #[arg(long)]
    config_dir: PathBuf,
    /// Serve only Gateways of this gatewayClassName (default: every Gateway in the directory).
    #[arg(long)]
    gateway_class: Option<String>,
    /// Address Envoy binds Gateway listeners to.
    #[arg(long, default_value = "127.0.0.1")]
    listener_address: String,
    /// Trust bundle used for `wellKnownCACertificates: System`.
    #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
    system_ca_bundle: PathBuf,
}

impl Translation {
    fn resolve_options(&self) -> resolve::Options {
        resolve::Options {
            gateway_class: self.gateway_class.clone(),
            system_ca_bundle: self.system_ca_bundle.clone(),
        }
    }
    fn translate_options(&self, delivery: Delivery) -> TranslateOptions {
        TranslateOptions {
            listener_address: self.listener_address.clone(),
            delivery,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the directory and serve Envoy configuration over ADS (delta and state of the world).
    Serve {
        #[command(flatten)]
        translation: Translation,
        /// Where Envoys connect for ADS.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_address: SocketAddr,
        /// The loader's own HTTP endpoints: /healthz, /readyz, /status, /xds, /metrics.
        #[arg(long, default_value = "127.0.0.1:18001")]
        admin_address: SocketAddr,
    },
    /// Print a complete static Envoy bootstrap for the directory (CAs inline).
    Render {
        #[command(flatten)]
        translation: Translation,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
        /// Envoy's admin address in the rendered bootstrap.
        #[arg(long, default_value = "127.0.0.1:19000")]
        admin_address: SocketAddr,
    },
    /// Print the bootstrap that points a stock Envoy at this loader over ADS.
    Bootstrap {
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_address: SocketAddr,
        /// Envoy's admin address.
        #[arg(long, default_value = "127.0.0.1:19000")]
        admin_address: SocketAddr,
        #[arg(long, default_value = "backendtls-envoy")]
        node_id: String,
        /// State-of-the-world ADS instead of delta.
        #[arg(long)]
        sotw: bool,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
    },
}

fn print(value: &serde_json::Value, format: Format) {
    match format {
        Format::Yaml => print!("{}", xds::json::to_yaml(value)),
        Format::Json => println!("{value:#}"),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            translation,
            xds_address,
            admin_address,
        } => {
            let options = serve::ServeOptions {
                config_dir: translation.config_dir.clone(),
                xds_address,
                admin_address,
                resolve: translation.resolve_options(),
                translate: translation.translate_options(Delivery::Ads),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(serve::serve(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backendtls-loader: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Render {
            translation,
            output,
            admin_address,
        } => {
            let mut config = ConfigDir::new(&translation.config_dir);
            if let Err(e) = config.reload() {
                eprintln!(
                    "backendtls-loader: cannot read {}: {e}",
                    translation.config_dir.display()
                );
                return ExitCode::from(2);
            }
            let build = pipeline::build(
                &config,
                &translation.resolve_options(),
                &translation.translate_options(Delivery::Inline),
            );
            for error in &build.errors {
                eprintln!("warning: {error}");
            }
            for problem in build.problems() {
                eprintln!("warning: {}: {}", problem.object, problem.reason);
            }
            let bootstrap = xds::bootstrap::static_bootstrap(&build.resources, admin_address);
            print(&xds::json::to_json(&bootstrap), output);
            ExitCode::SUCCESS
        }
        Command::Bootstrap {
            xds_address,
            admin_address,
            node_id,
            sotw,
            output,
        } => {
            let bootstrap = xds::bootstrap::ads_bootstrap(&xds::bootstrap::AdsBootstrapOptions {
                xds_address,
                admin_address,
                node_id,
                delta: !sotw,
            });
            print(&xds::json::to_json(&bootstrap), output);
            ExitCode::SUCCESS
        }
    }
}
