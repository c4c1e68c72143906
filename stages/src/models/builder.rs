//! Architectures declared once. An architecture's constructor asks a [`Scope`] for each of its
//! parameters by name, shape, initialisation and role; the same constructor run on a *listing*
//! scope gives the parameter list (what initialisation draws and checkpoints must hold), and
//! run on a *loading* scope binds the values of a [`Parameters`]. A parameter's name is written
//! in one place, as with candle's `VarBuilder::pp`.
use super::parameters::Parameters;
use super::spec::{Init, ParamDef, Role};
use crate::error::StageError;
use candle_core::{DType, Device, Tensor, Var};
use std::cell::RefCell;
use std::fmt::Display;

/// Where a scope's parameters come from.
enum Source<'a> {
    /// Records each parameter asked for; hands back shape-only placeholders.
    List(RefCell<Vec<ParamDef>>),
    /// Hands back the values of these parameters.
    Load(&'a Parameters),
}

/// The parameter source of a whole model; [`Builder::root`] gives its top-level scope.
pub struct Builder<'a> {
    source: Source<'a>,
}

impl<'a> Builder<'a> {
    /// A builder that lists the parameters an architecture asks for.
    pub fn listing() -> Builder<'static> {
        Builder { source: Source::List(RefCell::new(Vec::new())) }
    }

    /// A builder that binds the values of `params`.
    pub fn loading(params: &'a Parameters) -> Builder<'a> {
        Builder { source: Source::Load(params) }
    }

    pub fn root(&self) -> Scope<'_> {
        Scope { builder: self, prefix: String::new() }
    }

    /// The parameters asked for so far, in the order asked (empty for a loading builder).
    pub fn into_defs(self) -> Vec<ParamDef> {
        match self.source {
            Source::List(defs) => defs.into_inner(),
            Source::Load(_) => Vec::new(),
        }
    }
}

/// A position in the parameter namespace (`block1.layer0`), like `VarBuilder::pp`.
pub struct Scope<'a> {
    builder: &'a Builder<'a>,
    prefix: String,
}

impl<'a> Scope<'a> {
    /// A constant of the architecture (not a parameter: never saved or trained), `values` of
    /// `shape` on `device`; a loading scope uploads it once per [`Parameters`].
    pub fn constant(
        &self,
        leaf: &str,
        values: &[f32],
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor, StageError> {
        let name = if self.prefix.is_empty() { leaf.to_string() } else { format!("{}.{leaf}", self.prefix) };
        match &self.builder.source {
            Source::Load(params) => params.constant(&name, values, shape, device),
            Source::List(_) => Ok(crate::transfer::upload(values.to_vec(), shape, device)?),
        }
    }

    /// The sub-scope `name` (`scope.pp("bn1")` names `….bn1.*`).
    pub fn pp(&self, name: impl Display) -> Scope<'a> {
        let prefix =
            if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Scope { builder: self.builder, prefix }
    }

    fn full_name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// The parameter `leaf` of this scope: its value when loading, a placeholder of the right
    /// shape (no memory) when listing.
    pub fn param(&self, leaf: &str, shape: &[usize], init: Init, role: Role) -> Result<Tensor, StageError> {
        let name = self.full_name(leaf);
        match &self.builder.source {
            Source::List(defs) => {
                defs.borrow_mut().push(ParamDef { name, shape: shape.to_vec(), init, role });
                Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)?)
            }
            Source::Load(params) => params.get(&name),
        }
    }

    /// The variable behind `leaf` when it may be updated in place (a batch-norm statistic in
    /// training); `None` when listing or when it is frozen.
    pub fn var(&self, leaf: &str) -> Option<Var> {
        match &self.builder.source {
            Source::List(_) => None,
            Source::Load(params) => params.var(&self.full_name(leaf)),
        }
    }

    /// A bias-free convolution weight `out × input × k × k` named `weight`, kaiming-normal.
    pub fn conv_weight(&self, out: usize, input: usize, k: usize) -> Result<Tensor, StageError> {
        self.param("weight", &[out, input, k, k], Init::KaimingNormal { fan_in: input * k * k }, Role::Weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_records_full_names_in_order_and_loading_binds_them() {
        let builder = Builder::listing();
        let root = builder.root();
        let block = root.pp("block1").pp("layer0");
        let w = block.pp("conv1").conv_weight(4, 2, 3).unwrap();
        assert_eq!(w.dims(), &[4, 2, 3, 3]);
        root.param("scale", &[4], Init::Const(1.0), Role::NormAffine).unwrap();
        let defs = builder.into_defs();
        let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["block1.layer0.conv1.weight", "scale"]);
        assert_eq!(defs[0].init, Init::KaimingNormal { fan_in: 18 });
    }
}
