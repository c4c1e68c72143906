//! `um`: Unleashing-Mask fine-tuning (docs/methods.md §4). Starts from a trained model and trains every
//! weight with the per-batch loss |CE − ζ| + ζ: descent while the batch loss is above ζ, ascent
//! below. With `zeta = 0` the loss is plain cross-entropy, the control that separates UM's
//! effect from that of training longer. Outputs as `train` (see [`crate::training::fit`]).
use crate::error::StageError;
use crate::models::{Network, Parameters};
use crate::stage::Artifact;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::constraint::resolve_zeta;
use crate::training::fine_tuning::{FineTuneSetup, FineTuning};
use crate::training::fit::{fit, load_model_and_data, Fit, FitConfig, StepOutput};
use crate::training::losses::cross_entropy;
use crate::training::losses::um_loss;
use serde::{Deserialize, Serialize};

crate::training::fit::training_stage! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Um {
        /// The trained model to fine-tune.
        pub model: String,
        /// The training data (its train split).
        pub data: String,
        /// An `estimate-loss-constraint` stage giving ζ.
        #[serde(default)]
        pub constraint: Option<String>,
        /// ζ written out instead of estimated.
        #[serde(default)]
        pub zeta: Option<f64>,
    }
}

impl FineTuning for Um {
    fn setup(&self) -> FineTuneSetup<'_> {
        FineTuneSetup::um_objective(&self.model, &self.data, &self.constraint, self.zeta)
    }

    fn config(&self) -> FitConfig {
        self.fit_config()
    }
}

impl StageParams for Um {
    const KIND: &'static str = "um";
    const ROLE: crate::stage::Role = crate::stage::Role::Trains;
    const VERSION: u32 = 4;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    crate::training::fine_tuning::delegate_to_fine_tuning!();

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let zeta = resolve_zeta(ctx, &self.constraint, self.zeta)?;
        let (spec, values, data) = load_model_and_data(ctx, &self.model, &self.data)?;
        ctx.progress.info(&format!("fine-tuning with ζ = {zeta:.4}"));
        let params = Parameters::trainable(&spec, values)?;
        let net = Network::new(&spec, &params, ctx.device)?;
        fit(
            ctx,
            &data,
            &self.fit_config(),
            Fit {
                spec: &spec,
                vars: params.trainable_vars(),
                before_epoch: &mut |_| Ok(()),
                step: &mut |images, labels, mode| {
                    StepOutput::from_forward(net.forward(images, mode)?, labels, |logits, labels| {
                        um_loss(&cross_entropy(logits, labels)?, zeta)
                    })
                },
                snapshot: &|| Ok(params.values()),
                trained: &|| params.values(),
                restore: Some(&|values| params.restore(values)),
                side: None,
                label: "um",
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::models::spec::tiny_spec;
    use crate::models::{Mode, Network, Parameters};
    use crate::training::losses::cross_entropy;
    use crate::training::losses::um_loss;
    use crate::training::optim::{Sgd, SgdConfig};
    use candle_core::{Device, Tensor};

    /// CE of a fixed batch after one SGD step on the UM loss with the given ζ.
    fn ce_before_and_after(zeta_above_ce_by: f64) -> (f64, f64) {
        let dev = Device::Cpu;
        let spec = tiny_spec();
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let params = Parameters::trainable(&spec, values).unwrap();
        let net = Network::new(&spec, &params, &dev).unwrap();
        let images = crate::math::rng::test_images(11, &[6, 1, 8, 8]);
        let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &dev).unwrap();
        let ce = |step: usize| {
            let out = net.forward(&images, &mut Mode::train(0, 0, step)).unwrap();
            cross_entropy(&out.logits, &labels).unwrap()
        };
        let before = ce(0);
        let before_value = before.to_scalar::<f32>().unwrap() as f64;
        let zeta = (before_value + zeta_above_ce_by).max(0.0);
        let loss = um_loss(&before, zeta).unwrap();
        let config = SgdConfig { lr: 0.05, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        Sgd::new(params.trainable_vars(), config).step(&loss.backward().unwrap()).unwrap();
        let after = ce(1).to_scalar::<f32>().unwrap() as f64;
        (before_value, after)
    }

    #[test]
    fn a_step_below_zeta_raises_the_loss_and_above_lowers_it() {
        let (before, after) = ce_before_and_after(0.5);
        assert!(after > before, "CE < ζ: gradient ascent must raise CE ({before} → {after})");
        let (before, after) = ce_before_and_after(-0.5);
        assert!(after < before, "CE > ζ: gradient descent must lower CE ({before} → {after})");
    }
}
