//! A model over a whole image set, in evaluation mode, batch by batch.
use super::layers::Mode;
use super::network::Network;
use crate::data::ImageSet;
use crate::error::StageError;
use crate::stage::RunContext;

/// Logits and penultimate features of every image of a set (evaluation mode).
pub struct ForwardPass {
    pub logits: Vec<Vec<f32>>,
    pub features: Vec<Vec<f32>>,
}

/// Runs `net` over every image of `set` in evaluation mode.
pub fn forward_all(
    ctx: &RunContext,
    net: &Network,
    set: &ImageSet,
    batch_size: usize,
    label: &str,
) -> Result<ForwardPass, StageError> {
    let bar = ctx.progress.bar(label, set.batch_count(batch_size) as u64, "batches");
    let mut pass =
        ForwardPass { logits: Vec::with_capacity(set.len()), features: Vec::with_capacity(set.len()) };
    for images in set.batches(batch_size, ctx.device) {
        let out = net.forward(&images?, &mut Mode::Eval)?;
        pass.logits.extend(out.logits.to_vec2::<f32>()?);
        pass.features.extend(out.features.to_vec2::<f32>()?);
        bar.inc(1);
    }
    bar.finish("");
    Ok(pass)
}

/// The index of the largest value (the first of ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}
