//! What every fine-tuning stage (`um`, `umap`, `oe`, `energy-oe`, `poem`) shares: it starts from
//! an upstream model, trains on a dataset's train split, may take ζ from a constraint stage or
//! the recipe, and (the outlier-exposure stages) draws auxiliary outliers. [`FineTuning`] gives
//! their references, checks, model source and workload once; each kind delegates its
//! `StageParams` methods to it and adds its own checks.
use super::constraint::{check_zeta_source, fine_tuning_inputs};
use super::fit::FitConfig;
use crate::error::ParamError;
use crate::estimate::workload::{ModelSource, Workload};
use crate::stage::Input;

/// The `StageParams` methods a fine-tuning kind takes from its [`FineTuning`] implementation:
/// `inputs`, `check`, `model_source` and `workload`. Written inside the kind's
/// `impl StageParams` block.
macro_rules! delegate_to_fine_tuning {
    () => {
        fn inputs(&self) -> Vec<$crate::stage::Input> {
            $crate::training::fine_tuning::FineTuning::fine_tuning_inputs(self)
        }

        fn check(&self) -> Vec<$crate::error::ParamError> {
            $crate::training::fine_tuning::FineTuning::fine_tuning_check(self)
        }

        fn model_source(&self) -> Option<$crate::estimate::workload::ModelSource> {
            Some($crate::training::fine_tuning::FineTuning::fine_tuning_model_source(self))
        }

        fn workload(&self) -> Option<$crate::estimate::workload::Workload> {
            Some($crate::training::fine_tuning::FineTuning::fine_tuning_workload(self))
        }
    };
}
pub(crate) use delegate_to_fine_tuning;

/// Whether the stage needs ζ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZetaUse {
    /// The UM loss is the objective: exactly one of `constraint` and `zeta`.
    Required,
    /// The outlier-exposure stages: with ζ the ID term becomes the UM loss ("OE+UM").
    Optional,
}

/// The fields a fine-tuning stage declares besides its optimisation ones.
pub struct FineTuneSetup<'a> {
    /// The trained model to fine-tune.
    pub model: &'a str,
    /// The training data (its train split).
    pub data: &'a str,
    /// An `estimate-loss-constraint` stage giving ζ.
    pub constraint: &'a Option<String>,
    /// ζ written out instead.
    pub zeta: Option<f64>,
    pub zeta_use: ZetaUse,
    /// The auxiliary outliers of the outlier-exposure stages.
    pub outliers: Option<OutlierSetup<'a>>,
}

impl<'a> FineTuneSetup<'a> {
    /// The setup of a stage whose objective is the UM loss (um, umap): no outliers, ζ required.
    pub fn um_objective(
        model: &'a str,
        data: &'a str,
        constraint: &'a Option<String>,
        zeta: Option<f64>,
    ) -> Self {
        FineTuneSetup { model, data, constraint, zeta, zeta_use: ZetaUse::Required, outliers: None }
    }
}

/// A fine-tuning stage kind.
pub trait FineTuning {
    fn setup(&self) -> FineTuneSetup<'_>;
    fn config(&self) -> FitConfig;
    /// Checks of the kind's own fields (after the shared ones).
    fn own_check(&self) -> Vec<ParamError> {
        Vec::new()
    }

    /// The model, the data, the constraint stage and the auxiliary outliers.
    fn fine_tuning_inputs(&self) -> Vec<Input> {
        let setup = self.setup();
        let mut inputs = fine_tuning_inputs(setup.model, setup.data, setup.constraint);
        if let Some(outliers) = &setup.outliers {
            inputs.push(Input::dataset(&["aux"], outliers.aux));
        }
        inputs
    }

    /// The optimisation fields, where ζ comes from, the outlier fields, then the kind's own.
    fn fine_tuning_check(&self) -> Vec<ParamError> {
        let setup = self.setup();
        let mut problems = self.config().check();
        match (&setup.outliers, setup.zeta_use) {
            (Some(outliers), _) => problems.extend(outliers.check(setup.data, setup.constraint, setup.zeta)),
            (None, ZetaUse::Required) => problems.extend(check_zeta_source(setup.constraint, setup.zeta)),
            (None, ZetaUse::Optional) => {}
        }
        problems.extend(self.own_check());
        problems
    }

    /// The model is the upstream one being fine-tuned.
    fn fine_tuning_model_source(&self) -> ModelSource {
        ModelSource::Upstream(self.setup().model.to_string())
    }

    /// Training passes over the ID data; with outliers each step also feeds its auxiliary batch.
    fn fine_tuning_workload(&self) -> Workload {
        let setup = self.setup();
        let fit = self.config();
        let per_id_image = match &setup.outliers {
            Some(outliers) => {
                1.0 + outliers.aux_batch_size.unwrap_or(fit.batch_size) as f64 / fit.batch_size.max(1) as f64
            }
            None => 1.0,
        };
        fit.workload(self.fine_tuning_model_source(), setup.data, per_id_image)
    }
}

/// The auxiliary-outlier fields of an outlier-exposure stage.
pub struct OutlierSetup<'a> {
    pub aux: &'a str,
    pub aux_batch_size: Option<usize>,
    pub pool_size: Option<usize>,
}

impl OutlierSetup<'_> {
    /// ζ, when given, is finite and non-negative and comes from one source; sizes are
    /// positive; the outliers are not the ID training data `data`.
    pub fn check(&self, data: &str, constraint: &Option<String>, zeta: Option<f64>) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if let Some(z) = zeta {
            if !(z.is_finite() && z >= 0.0) {
                problems.push(ParamError::new(&["zeta"], "must be a finite number ≥ 0"));
            }
        }
        if constraint.is_some() && zeta.is_some() {
            problems.extend(check_zeta_source(constraint, zeta));
        }
        if let Some(n) = self.aux_batch_size {
            problems.extend(ParamError::batch_size("aux_batch_size", n));
        }
        match self.pool_size {
            Some(0) => problems.push(ParamError::new(&["pool_size"], "must be greater than 0")),
            // The pool is held in memory as images: more than 2^24 is a typo, not a pool.
            Some(n) if n > 1 << 24 => problems.push(ParamError::new(
                &["pool_size"],
                format!("{n} outliers is more than the most this accepts, {}", 1 << 24),
            )),
            _ => {}
        }
        if self.aux == data {
            problems
                .push(ParamError::new(&["aux"], "the auxiliary outliers must not be the ID training data"));
        }
        problems
    }
}
