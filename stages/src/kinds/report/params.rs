//! The parameters of a `report` stage ([`Report`]), apart from what it computes, so that the
//! files computing it can read them.
use super::lineage::Lineage;
use crate::metrics::Convention;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The score stages to report, in table order.
    pub scores: Vec<String>,
    #[serde(default)]
    pub title: Option<String>,
    /// `"idpos"` (docs/methods.md §8, default) or `"openood"` (OpenOOD v1.5's definitions).
    #[serde(default)]
    pub convention: Convention,
    /// One of `scores` to compare every other with: the report then says, per method and per
    /// group, whether each beats it (paired over seeds). Left out of the parameters when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Named groups of OOD sets (`{ semantic = ["mnist_6_9"], noise = ["gaussian", "uniform"] }`):
    /// every summary is given per group. A set in no group is a group of its own; by default
    /// every set is. Checked against the score stages' OOD sets by `pipeline check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood_groups: Option<BTreeMap<String, Vec<String>>>,
    /// Where each score stage's model comes from: filled in by the recipe loader from the
    /// declarations (a value written in a recipe is replaced).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lineage: Lineage,
}
