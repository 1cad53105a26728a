//! What a server binary is extended with: reconcilers and store engines
//! registered by name, which the configuration then selects
//! (`reconciler = "cart-union"`, `store.engine = "my-engine"`).
//!
//! Built with [`crate::ServerBuilder`]; `serve` and `dev` check the
//! configuration against it before anything touches the disk.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use dynamo_core::reconcile::{Reconciler, ReconcilerRegistry};
use dynamo_core::store::Store;
use dynamo_core::transport::Transport;

use crate::backends;
use crate::config::{ConfigError, ServerConfig};

/// Opens a store engine for a node: given the node's configuration (its
/// `data_dir` exists and is writable when this is called), returns the
/// store. Runs on a blocking thread.
pub type StoreFactory = Arc<dyn Fn(&ServerConfig) -> anyhow::Result<Arc<dyn Store>> + Send + Sync>;

/// Why a plugin could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Two reconcilers, or a reconciler and a built-in, share a name.
    #[error("a reconciler named {0:?} is already registered")]
    DuplicateReconciler(String),
    /// Two store engines share a name.
    #[error("a store engine named {0:?} is already registered")]
    DuplicateStore(String),
}

/// The reconcilers and store engines a server knows by name, beyond the
/// built-in ones ([`ReconcilerRegistry::with_builtins`], the store
/// engines compiled in by Cargo features).
#[derive(Clone)]
pub struct Plugins {
    reconcilers: ReconcilerRegistry,
    stores: BTreeMap<String, StoreFactory>,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins { reconcilers: ReconcilerRegistry::with_builtins(), stores: BTreeMap::new() }
    }
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugins")
            .field("reconcilers", &self.reconcilers)
            .field("stores", &self.stores.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Plugins {
    /// Registers a reconciler under its [`Reconciler::name`].
    ///
    /// # Errors
    /// [`PluginError::DuplicateReconciler`] when the name is taken.
    pub fn register_reconciler(&mut self, reconciler: Arc<dyn Reconciler>) -> Result<(), PluginError> {
        let name = reconciler.name().to_string();
        self.reconcilers.register(reconciler).map_err(|_| PluginError::DuplicateReconciler(name))
    }

    /// Registers a store engine under `name`. A registered engine takes
    /// precedence over a built-in one of the same name.
    ///
    /// # Errors
    /// [`PluginError::DuplicateStore`] when the name is taken.
    pub fn register_store(&mut self, name: &str, factory: StoreFactory) -> Result<(), PluginError> {
        if self.stores.contains_key(name) {
            return Err(PluginError::DuplicateStore(name.to_string()));
        }
        self.stores.insert(name.to_string(), factory);
        Ok(())
    }

    /// The reconciler registry.
    pub fn reconcilers(&self) -> &ReconcilerRegistry {
        &self.reconcilers
    }

    /// Checks that the reconciler, store engine and transport `config`
    /// names are known to this binary, touching nothing on disk, and
    /// returns the reconciler.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key, the value and the known names.
    pub fn check(&self, config: &ServerConfig) -> Result<Arc<dyn Reconciler>, ConfigError> {
        let reconciler = self.reconciler(&config.reconciler)?;
        if !self.stores.contains_key(&config.store.engine) {
            backends::check_store(&config.store.engine, self.stores.keys().map(String::as_str))?;
        }
        backends::check_transport(&config.peer.transport)?;
        Ok(reconciler)
    }

    /// The reconciler registered as `name`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `reconciler` and the known names.
    pub fn reconciler(&self, name: &str) -> Result<Arc<dyn Reconciler>, ConfigError> {
        self.reconcilers.get(name).map_err(|_| {
            ConfigError::Invalid(format!(
                "reconciler = {name:?} is not known to this binary; known: {}",
                self.reconcilers.names().join(", ")
            ))
        })
    }

    /// Opens the configured store: a registered engine, else a built-in.
    ///
    /// # Errors
    /// An unusable data directory, or the engine's error.
    pub fn open_store(&self, config: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
        match self.stores.get(&config.store.engine) {
            Some(factory) => {
                backends::usable_dir(&config.data_dir)?;
                factory(config)
            }
            None => backends::open_store(config),
        }
    }

    /// Binds the configured peer transport.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn open_transport(&self, config: &ServerConfig) -> anyhow::Result<Arc<dyn Transport>> {
        backends::open_transport(config).await
    }
}

#[cfg(test)]
mod tests {
    use dynamo_core::store::MemStore;

    use super::*;

    #[test]
    fn unknown_names_are_refused_before_the_disk_is_touched() {
        let plugins = Plugins::default();
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("never-created");
        let config = ServerConfig {
            reconciler: "cart-union".into(),
            data_dir: data_dir.clone(),
            ..Default::default()
        };
        let err = plugins.check(&config).err().unwrap().to_string();
        assert!(err.contains("reconciler = \"cart-union\"") && err.contains("keep-siblings"), "{err}");
        assert!(!data_dir.exists());
    }

    #[test]
    fn a_registered_store_engine_is_chosen_by_name() {
        let mut plugins = Plugins::default();
        plugins
            .register_store("memory", Arc::new(|_: &ServerConfig| Ok(Arc::new(MemStore::new()) as _)))
            .unwrap();
        let err = plugins.register_store("memory", Arc::new(|_: &ServerConfig| anyhow::bail!("never")));
        assert_eq!(err.unwrap_err(), PluginError::DuplicateStore("memory".into()));
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        config.store.engine = "memory".into();
        plugins.check(&config).unwrap();
        plugins.open_store(&config).unwrap();
        config.store.engine = "rocksdb".into();
        let err = plugins.check(&config).err().unwrap().to_string();
        assert!(err.contains("memory") && err.contains("redb"), "{err}");
    }

    #[test]
    fn a_reconciler_name_is_registered_once() {
        let mut plugins = Plugins::default();
        let err = plugins.register_reconciler(Arc::new(dynamo_core::reconcile::LastWriteWins)).unwrap_err();
        assert_eq!(err, PluginError::DuplicateReconciler("last-write-wins".into()));
    }
}
