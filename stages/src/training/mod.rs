//! Training: the epoch loop and its configuration ([`fit`]), the optimiser ([`optim`]) and
//! learning-rate schedules ([`schedule`]), the losses ([`losses`]), the Unleashing-Mask pieces
//! ([`masks`], [`constraint`]), what every fine-tuning stage shares ([`fine_tuning`]), and
//! what the outlier-exposure stages share ([`outliers`],
//! [`bayes`] for POEM's outlier selection), and the state a killed run resumes from
//! ([`resume`]).
pub mod bayes;
pub mod constraint;
pub mod fine_tuning;
pub mod fit;
pub mod losses;
pub mod masks;
pub mod optim;
pub mod outliers;
pub mod resume;
pub mod schedule;
