//! Consumer group settings, persisted as `config/subscriptionGroup.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use spate_remoting::protocol::{DataVersion, SubscriptionGroupConfig};

use crate::error::BrokerError;
use crate::persist;

/// Most groups one broker keeps.
pub const MAX_GROUPS: usize = 100_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionGroupFile {
    pub subscription_group_table: BTreeMap<String, SubscriptionGroupConfig>,
    pub data_version: DataVersion,
}

pub struct SubscriptionGroups {
    table: Arc<RwLock<SubscriptionGroupFile>>,
    path: PathBuf,
    writer: persist::TableWriter,
}

impl SubscriptionGroups {
    pub fn load(root: &std::path::Path) -> Result<SubscriptionGroups, BrokerError> {
        let path = persist::config_path(root, "subscriptionGroup.json");
        let mut table: SubscriptionGroupFile = persist::load(&path)?.unwrap_or_default();
        table.subscription_group_table.retain(|name, cfg| {
            let ok = crate::names::validate_group(name).is_ok() && cfg.group_name == *name;
            if !ok {
                tracing::error!(group = %name.chars().take(200).collect::<String>(), "invalid group in subscriptionGroup.json ignored");
            }
            ok
        });
        Ok(SubscriptionGroups { table: Arc::new(RwLock::new(table)), path, writer: Default::default() })
    }

    pub fn get(&self, group: &str) -> Option<SubscriptionGroupConfig> {
        self.table.read().subscription_group_table.get(group).cloned()
    }

    /// Adds or replaces a group; false when the table is full.
    pub fn upsert(&self, cfg: SubscriptionGroupConfig) -> bool {
        if crate::names::validate_group(&cfg.group_name).is_err() {
            return false;
        }
        let mut t = self.table.write();
        if !t.subscription_group_table.contains_key(&cfg.group_name) && t.subscription_group_table.len() >= MAX_GROUPS {
            return false;
        }
        t.subscription_group_table.insert(cfg.group_name.clone(), cfg);
        t.data_version.counter += 1;
        true
    }

    /// The group's config, created with defaults when `auto_create` allows.
    /// Returns whether the table changed.
    pub fn ensure(&self, group: &str, auto_create: bool) -> bool {
        if !auto_create || self.get(group).is_some() {
            return false;
        }
        self.upsert(SubscriptionGroupConfig { group_name: group.to_string(), ..Default::default() })
    }

    pub fn delete(&self, group: &str) -> bool {
        self.table.write().subscription_group_table.remove(group).is_some()
    }

    /// A slave takes its master's table as is; returns whether it changed.
    pub fn replace_from_master(&self, mut from_master: SubscriptionGroupFile) -> bool {
        let mut t = self.table.write();
        if t.subscription_group_table == from_master.subscription_group_table {
            return false;
        }
        from_master
            .subscription_group_table
            .retain(|name, cfg| crate::names::validate_group(name).is_ok() && cfg.group_name == *name);
        if from_master.subscription_group_table.len() > MAX_GROUPS {
            let keep: Vec<String> = from_master.subscription_group_table.keys().take(MAX_GROUPS).cloned().collect();
            from_master.subscription_group_table.retain(|k, _| keep.contains(k));
        }
        *t = from_master;
        true
    }

    pub fn snapshot(&self) -> SubscriptionGroupFile {
        self.table.read().clone()
    }

    pub async fn persist(&self) -> Result<(), BrokerError> {
        let table = self.table.clone();
        self.writer
            .write(self.path.clone(), move || Some(serde_json::to_vec_pretty(&*table.read()).unwrap_or_default()))
            .await
    }
}
