//! Scale-out on Kafka: the pipeline split into two roles that scale separately.
//!
//! - `run --role enrich` ([`enrich`]) decodes, summarizes and embeds. It is stateless: any number
//!   of instances share the `conversations` topic in one consumer group (`<group_id>.enrich`),
//!   and each writes [`record::EnrichedRecord`]s to the internal topic
//!   (`scale.enriched_topic`), on the partition that the fixed [`codebook::Codebook`] picks for
//!   the vector. Its offsets on `conversations` are acknowledged only once the broker has the
//!   record.
//! - `run --role cluster` ([`shards`]) consumes the internal topic in its own group
//!   (`<group_id>.cluster`). Each partition is a shard: its own cluster state, detectors,
//!   snapshot and alert spool, owned by exactly one instance at a time. A shard follows its
//!   partition through rebalances: the old owner snapshots it and commits before giving it up
//!   (`source/kafka.rs`), the new owner restores that snapshot, so the snapshot directory must
//!   be shared by the cluster instances.
//! - `run --role all` (the default) is the whole pipeline in one process, as before.
//!
//! The codebook keeps near-duplicates together, but a cluster whose members straddle a cell
//! boundary is split between shards; `clusterwatch eval sharding` measures how often.

pub mod codebook;
pub mod enrich;
pub(crate) mod intake;
pub mod record;
pub mod shards;

use crate::embed::{EmbedError, Embedder};

/// Which part of the pipeline a `run` process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Everything in one process.
    #[default]
    All,
    /// Decode, summarize, embed; write records to the internal topic.
    Enrich,
    /// Cluster, detect and alert on the internal topic, one shard per partition.
    Cluster,
}

/// The consumer group of a role: the roles read different topics, so they must not share one.
pub fn role_group(group_id: &str, role: Role) -> String {
    match role {
        Role::All => group_id.to_string(),
        Role::Enrich => format!("{group_id}.enrich"),
        Role::Cluster => format!("{group_id}.cluster"),
    }
}

/// The vector space of records that arrive already embedded: the cluster role needs its id and
/// dimension (from the codebook), never the model itself.
pub struct PrecomputedVectors {
    id: String,
    dimension: usize,
}

impl PrecomputedVectors {
    pub fn new(id: &str, dimension: usize) -> Self {
        PrecomputedVectors {
            id: id.to_string(),
            dimension,
        }
    }
}

impl Embedder for PrecomputedVectors {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed_batch(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Err(EmbedError::Config(
            "the cluster role takes vectors from the enrich role; it embeds nothing".into(),
        ))
    }
}
