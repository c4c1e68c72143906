//! What a user names on the command line (`--only`, `--force`, `show`, `plan`): a stage
//! (`zeta`, every seed of it) or one instance of it (`zeta@0`, as the run log and reports call
//! it), checked against the recipe.
use crate::plan::{Instance, Plan};
use crate::recipe::diagnostic::did_you_mean;
use crate::recipe::Recipe;
use std::collections::{BTreeMap, BTreeSet};

/// A name on the command line that names nothing in the recipe; the message says what does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

impl SelectorError {
    pub fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}

/// A stage, or one seed's instance of it, or the instances of one variant of its sweep.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    /// Index of the stage in the recipe.
    pub stage: usize,
    /// `Some(seed)` for `name@seed`; `None` for every instance of the stage.
    pub seed: Option<u64>,
    /// `Some` for `name[k=v,…]`: the swept parameters, sorted, as labels write them.
    pub variant: Option<Vec<String>>,
}

impl Selector {
    /// Parses `name` or `name@seed`; an unknown stage or seed is an error that says what exists
    /// (`flag` names the option in the message).
    pub fn parse(recipe: &Recipe, text: &str, flag: &str) -> Result<Selector, SelectorError> {
        let (name, seed) = match text.rsplit_once('@') {
            Some((name, seed)) => (name, Some(seed)),
            None => (text, None),
        };
        let (name, variant) = match name.split_once('[') {
            Some((name, rest)) => match rest.strip_suffix(']') {
                Some(inside) => {
                    let mut parts: Vec<String> = inside.split(',').map(|p| p.trim().to_string()).collect();
                    parts.sort();
                    (name, Some(parts))
                }
                None => {
                    return Err(SelectorError(format!(
                        "{flag} {text}: a variant is written `{name}[param=value,…]`"
                    )))
                }
            },
            None => (name, None),
        };
        let selector = Self::parse_plain(recipe, text, name, seed, flag)?;
        if variant.is_some() && recipe.groups.get(selector.stage).is_none_or(|g| g.is_empty()) {
            return Err(SelectorError(format!(
                "{flag} {text}: `{name}` is not swept; name it without `[…]`"
            )));
        }
        Ok(Selector { variant, ..selector })
    }

    fn parse_plain(
        recipe: &Recipe,
        text: &str,
        name: &str,
        seed: Option<&str>,
        flag: &str,
    ) -> Result<Selector, SelectorError> {
        let Some(stage) = recipe.stage_index(name) else {
            let hint = did_you_mean(name, recipe.stages.iter().map(|s| s.name.as_str()))
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(SelectorError(format!("{flag} {text}: the recipe has no stage `{name}`{hint}")));
        };
        let Some(seed) = seed else { return Ok(Selector { stage, seed: None, variant: None }) };
        if recipe.stages[stage].kind.across_seeds() {
            return Err(SelectorError(format!(
                "{flag} {text}: `{name}` combines every seed and has one instance; name it without `@`"
            )));
        }
        let seeds: Vec<String> = recipe.seeds.iter().map(u64::to_string).collect();
        match seed.parse::<u64>() {
            Ok(seed) if recipe.seeds.contains(&seed) => Ok(Selector { stage, seed: Some(seed), variant: None }),
            _ => Err(SelectorError(format!(
                "{flag} {text}: the recipe has no seed `{seed}` (its seeds: {}; instances are named `{name}@SEED`)",
                seeds.join(", ")
            ))),
        }
    }

    /// Parses every text of `texts`.
    pub fn parse_all(recipe: &Recipe, texts: &[String], flag: &str) -> Result<Vec<Selector>, SelectorError> {
        texts.iter().map(|t| Selector::parse(recipe, t, flag)).collect()
    }

    pub fn matches(&self, instance: &Instance) -> bool {
        let variant = || {
            let mut parts: Vec<String> = instance.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.sort();
            parts
        };
        instance.stage == self.stage
            && (self.seed.is_none() || instance.seed == self.seed)
            && self.variant.as_ref().is_none_or(|wanted| *wanted == variant())
    }
}

/// The stages the selectors name.
pub fn stages_of(selectors: &[Selector]) -> BTreeSet<usize> {
    selectors.iter().map(|s| s.stage).collect()
}

/// The plan of `recipe` for `selectors`: the instances they name and everything those read, in
/// dependency order; every instance when there is no selector.
pub fn plan_for(recipe: &Recipe, selectors: &[Selector]) -> Plan {
    if selectors.is_empty() {
        return Plan::new(recipe, None);
    }
    let full = Plan::new(recipe, Some(&stages_of(selectors)));
    let mut keep = BTreeSet::new();
    let mut stack: Vec<usize> = instances_of(&full, selectors).into_iter().collect();
    while let Some(i) = stack.pop() {
        if keep.insert(i) {
            stack.extend(full.instances[i].deps());
        }
    }
    let new_index: BTreeMap<usize, usize> = keep.iter().enumerate().map(|(new, &old)| (old, new)).collect();
    let instances = keep
        .iter()
        .map(|&old| {
            let mut instance = full.instances[old].clone();
            for (_, list) in &mut instance.upstream {
                for d in list.iter_mut() {
                    *d = new_index[d];
                }
            }
            instance
        })
        .collect();
    Plan { instances }
}

/// The plan's instances any selector matches.
pub fn instances_of(plan: &Plan, selectors: &[Selector]) -> BTreeSet<usize> {
    (0..plan.instances.len()).filter(|&i| selectors.iter().any(|s| s.matches(&plan.instances[i]))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            "[recipe]\nseeds = [0, 1]\n[datasets.n]\nformat = \"uniform-noise\"\ncount = 8\n\
             [stages.a]\nkind = \"train\"\ndata = \"n\"\n\
             [stages.s]\nkind = \"score\"\nmodel = \"a\"\nid = \"n\"\nood = [\"n2\"]\n\
             [datasets.n2]\nformat = \"gaussian-noise\"\ncount = 8\n\
             [stages.t]\nkind = \"report\"\nscores = [\"s\"]\n",
        )
        .unwrap();
        Recipe::load(&path).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn stages_and_instances_are_named_as_the_run_log_names_them() {
        let recipe = recipe();
        assert_eq!(
            Selector::parse(&recipe, "a", "show"),
            Ok(Selector { stage: 0, seed: None, variant: None })
        );
        assert_eq!(
            Selector::parse(&recipe, "s@1", "show"),
            Ok(Selector { stage: 1, seed: Some(1), variant: None })
        );
        let error = Selector::parse(&recipe, "a@7", "--only").unwrap_err();
        assert!(error.contains("no seed `7`") && error.contains("0, 1"), "{error}");
        let error = Selector::parse(&recipe, "t@0", "--force").unwrap_err();
        assert!(error.contains("one instance"), "{error}");
        let error = Selector::parse(&recipe, "sx@0", "show").unwrap_err();
        assert!(error.contains("did you mean `s`?"), "{error}");

        let plan = Plan::new(&recipe, None);
        let picked = instances_of(&plan, &[Selector { stage: 1, seed: Some(1), variant: None }]);
        let ids: Vec<&str> = picked.iter().map(|&i| plan.instances[i].id.as_str()).collect();
        assert_eq!(ids, ["s@1"]);

        // `--only s@1`: that instance and what it reads, nothing of seed 0.
        let only = plan_for(&recipe, &[Selector { stage: 1, seed: Some(1), variant: None }]);
        let ids: Vec<&str> = only.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a@1", "s@1"]);
        assert_eq!(only.instances[1].upstream, vec![("a".to_string(), vec![0])]);
        // `--only t`: the report reads every seed.
        assert_eq!(plan_for(&recipe, &[Selector { stage: 2, seed: None, variant: None }]).instances.len(), 5);
    }
}
