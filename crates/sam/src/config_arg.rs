//! Where the commands that talk to a cluster find its configuration file: `--config` anywhere
//! on the command line, else `SAM_CONFIG`, else `sam-local/sam.toml` (what `sam local up`
//! writes) when it is there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

/// The file `sam local up` writes, used when nothing else names one.
pub const LOCAL_CONFIG: &str = "sam-local/sam.toml";

/// The `--config` option of the commands that talk to a cluster.
#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// The cluster's configuration file [default: sam-local/sam.toml when present].
    #[arg(long, env = "SAM_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file to read.
    pub fn path(&self) -> Result<PathBuf> {
        match &self.config {
            Some(path) => Ok(path.clone()),
            None if Path::new(LOCAL_CONFIG).is_file() => Ok(PathBuf::from(LOCAL_CONFIG)),
            None => bail!(
                "no configuration: give --config FILE or set SAM_CONFIG (there is no {LOCAL_CONFIG} here, \
                 which `sam local up` writes)"
            ),
        }
    }
}
