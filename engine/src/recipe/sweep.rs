//! Sweeps: a stage parameter written `field = { sweep = [v1, v2, …] }` makes one variant of the
//! stage per value (per combination of values when several fields are swept: their cross
//! product, or with `zip = true` the values paired by position). Stages downstream of a swept
//! stage fan out with it; a stage that combines variants (a report, a selection) reads them all.
//!
//! An [`Axis`] is one swept field of one stage; a [`Group`] is axes that move together (one
//! index for all), so a stage's instances are the cross product of its groups' indices.
use super::tree::{Node, NodeValue};
use std::ops::Range;

/// One swept field of a stage, its values in the order written, and where they were written.
#[derive(Debug, Clone)]
pub struct SweptField {
    pub name: String,
    pub values: Vec<serde_json::Value>,
    pub value_spans: Vec<Range<usize>>,
    /// The `{ sweep = … }` table.
    pub span: Range<usize>,
}

/// A stage's own sweep.
pub struct Sweep {
    pub fields: Vec<SweptField>,
    /// `zip = true`: pair values by position instead of crossing them; also pairs the stage's
    /// sweeps with those it inherits.
    pub zip: bool,
    /// Where `zip` was written.
    pub zip_span: Option<Range<usize>>,
}

/// One swept field of one stage (by recipe index).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Axis {
    pub stage: usize,
    pub field: String,
}

/// Axes that share one index, and how many values each has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub axes: Vec<Axis>,
    pub len: usize,
}

/// The fields of `table` written as `{ sweep = [...] }`; malformed ones are (span, message).
pub fn swept_fields(table: &Node) -> (Vec<SweptField>, Vec<(Range<usize>, String)>) {
    let mut fields = Vec::new();
    let mut problems = Vec::new();
    for entry in table.entries() {
        let NodeValue::Table(inner) = &entry.node.value else { continue };
        let Some(sweep) = inner.iter().find(|e| e.key == "sweep") else { continue };
        if inner.len() > 1 {
            let other = inner.iter().find(|e| e.key != "sweep").expect("more than one key");
            problems.push((
                other.key_span.clone(),
                format!(
                    "`{}`: a sweep is written `{} = {{ sweep = [v1, v2] }}` with nothing else",
                    entry.key, entry.key
                ),
            ));
            continue;
        }
        match &sweep.node.value {
            NodeValue::Array(items) if !items.is_empty() => {
                let values: Vec<serde_json::Value> = items.iter().map(Node::to_json).collect();
                let distinct: std::collections::BTreeSet<String> =
                    values.iter().map(|v| v.to_string()).collect();
                if distinct.len() != values.len() {
                    problems.push((
                        sweep.node.span.clone(),
                        format!("`{}`: the sweep lists a value twice", entry.key),
                    ));
                    continue;
                }
                fields.push(SweptField {
                    name: entry.key.clone(),
                    values,
                    value_spans: items.iter().map(|n| n.span.clone()).collect(),
                    span: entry.node.span.clone(),
                });
            }
            _ => problems.push((
                sweep.node.span.clone(),
                format!("`{}`: `sweep` must be a non-empty array of values", entry.key),
            )),
        }
    }
    (fields, problems)
}

/// The value indices of every variant: the cross product of the fields' values (the first
/// field varying slowest), or with `zip` the values paired by position (equal lengths).
pub fn combinations(fields: &[SweptField], zip: bool) -> Vec<Vec<usize>> {
    if fields.is_empty() {
        return vec![Vec::new()];
    }
    if zip {
        let n = fields[0].values.len();
        return (0..n).map(|i| vec![i; fields.len()]).collect();
    }
    product(&fields.iter().map(|f| f.values.len()).collect::<Vec<_>>())
}

/// How many variants [`combinations`] would make, counted without making them (saturating:
/// a count past `u128` is `u128::MAX`).
pub fn variant_count(fields: &[SweptField], zip: bool) -> u128 {
    match (fields.first(), zip) {
        (None, _) => 1,
        (Some(first), true) => first.values.len() as u128,
        (Some(_), false) => fields.iter().fold(1u128, |acc, f| acc.saturating_mul(f.values.len() as u128)),
    }
}

/// Where a variant count comes from: "`lr` 10 × `wd` 1,000", or "`lr` and `wd` zipped, 10 each".
pub fn describe_count(fields: &[SweptField], zip: bool) -> String {
    let names: Vec<String> = fields.iter().map(|f| format!("`{}`", f.name)).collect();
    match (fields.first(), zip) {
        (Some(first), true) => format!("{} zipped, {} each", names.join(" and "), first.values.len()),
        _ => fields
            .iter()
            .map(|f| format!("`{}` {}", f.name, thousands(f.values.len() as u128)))
            .collect::<Vec<_>>()
            .join(" × "),
    }
}

/// How many points the cross product of `groups` has (saturating).
pub fn points(groups: &[Group]) -> u128 {
    groups.iter().fold(1u128, |acc, g| acc.saturating_mul(g.len as u128))
}

/// Every index vector `i` with `i[k] < lengths[k]`, the last index varying fastest (one empty
/// vector for no lengths).
pub fn product(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut all = vec![Vec::new()];
    for &len in lengths {
        all = all
            .into_iter()
            .flat_map(|prefix: Vec<usize>| {
                (0..len).map(move |i| {
                    let mut next = prefix.clone();
                    next.push(i);
                    next
                })
            })
            .collect();
    }
    all
}

/// A value as labels show it: numbers and booleans as written, strings without quotes.
pub fn show_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Merges groups that share an axis (they descend from one sweep; a `zip` downstream may have
/// joined it to others), keeping first-seen order.
pub fn merge(groups: Vec<Group>) -> Vec<Group> {
    let mut merged: Vec<Group> = Vec::new();
    for group in groups {
        let overlapping: Vec<usize> = merged
            .iter()
            .enumerate()
            .filter(|(_, m)| m.axes.iter().any(|a| group.axes.contains(a)))
            .map(|(i, _)| i)
            .collect();
        let mut joined = group;
        for &i in overlapping.iter().rev() {
            let other = merged.remove(i);
            for axis in other.axes.into_iter().rev() {
                if !joined.axes.contains(&axis) {
                    joined.axes.insert(0, axis);
                }
            }
        }
        let at = overlapping.first().copied().unwrap_or(merged.len()).min(merged.len());
        merged.insert(at, joined);
    }
    merged
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, n: usize) -> SweptField {
        SweptField {
            name: name.into(),
            values: (0..n).map(|i| serde_json::json!(i)).collect(),
            value_spans: vec![0..0; n],
            span: 0..0,
        }
    }

    #[test]
    fn combinations_cross_or_zip() {
        assert_eq!(combinations(&[], false), vec![Vec::<usize>::new()]);
        let fields = [field("a", 2), field("b", 3)];
        let cross = combinations(&fields, false);
        assert_eq!(cross.len(), 6);
        assert_eq!(cross[0], vec![0, 0]);
        assert_eq!(cross[1], vec![0, 1]);
        assert_eq!(cross[5], vec![1, 2]);
        let fields = [field("a", 3), field("b", 3)];
        assert_eq!(combinations(&fields, true), vec![vec![0, 0], vec![1, 1], vec![2, 2]]);
    }

    #[test]
    fn variants_are_counted_without_being_made() {
        let fields = [field("a", 1000), field("b", 1000), field("c", 1000)];
        assert_eq!(variant_count(&fields, false), 1_000_000_000);
        assert_eq!(variant_count(&fields, true), 1000);
        assert_eq!(variant_count(&[], false), 1);
        assert_eq!(describe_count(&fields[..2], false), "`a` 1,000 × `b` 1,000");
        assert_eq!(describe_count(&fields[..2], true), "`a` and `b` zipped, 1000 each");
        let huge: Vec<SweptField> = (0..40).map(|i| field(&i.to_string(), 100)).collect();
        assert_eq!(variant_count(&huge, false), u128::MAX, "saturates instead of overflowing");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn groups_sharing_an_axis_merge() {
        let axis = |s: usize, f: &str| Axis { stage: s, field: f.into() };
        let a = Group { axes: vec![axis(0, "delta")], len: 3 };
        let b = Group { axes: vec![axis(1, "keep")], len: 2 };
        let zipped = Group { axes: vec![axis(0, "delta"), axis(2, "lr")], len: 3 };
        let merged = merge(vec![a.clone(), b.clone(), zipped.clone()]);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().any(|g| g.axes.len() == 2 && g.axes.contains(&axis(2, "lr"))));
        assert!(merged.contains(&b));
        assert_eq!(merge(vec![a.clone(), a.clone()]), vec![a]);
    }

    #[test]
    fn values_show_without_quotes() {
        assert_eq!(show_value(&serde_json::json!(0.95)), "0.95");
        assert_eq!(show_value(&serde_json::json!("energy")), "energy");
        assert_eq!(show_value(&serde_json::json!(true)), "true");
    }
}
