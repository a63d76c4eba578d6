//! Where the transformer runs: `embedder.device = "cpu"` (the default) or `"cuda"` / `"cuda:N"`.
//!
//! The CUDA path is candle's, compiled in only with the `gpu` cargo feature (off by default, so CI
//! and CPU machines build without the CUDA toolkit). On a GPU the weights are loaded in fp16, as
//! the reference figures in issue 8 were measured; pooling and normalisation stay in fp32. A
//! build without the feature, or a machine without the GPU, gets a configuration error naming
//! both, never a silent fall-back to the CPU: an engineer who asked for the GPU is told.

use candle_core::{DType, Device};

use super::EmbedError;

/// A parsed `embedder.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDevice {
    Cpu,
    Cuda(usize),
}

impl ComputeDevice {
    pub fn parse(text: &str) -> Result<Self, EmbedError> {
        match text.trim() {
            "" | "cpu" => Ok(ComputeDevice::Cpu),
            "cuda" | "gpu" => Ok(ComputeDevice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(ComputeDevice::Cuda)
                .ok_or_else(|| {
                    EmbedError::Config(format!(
                        "embedder.device must be \"cpu\", \"cuda\" or \"cuda:N\", got {other:?}"
                    ))
                }),
        }
    }

    /// The candle device, and the dtype the weights are loaded in there.
    pub fn open(self) -> Result<(Device, DType), EmbedError> {
        match self {
            ComputeDevice::Cpu => Ok((Device::Cpu, DType::F32)),
            ComputeDevice::Cuda(ordinal) => Device::new_cuda(ordinal)
                .map(|device| (device, DType::F16))
                .map_err(|e| {
                    EmbedError::Config(format!(
                        "embedder.device = \"cuda:{ordinal}\" needs a build with `--features gpu` \
                         (candle's CUDA kernels, the CUDA toolkit at build time) and that GPU: {e}"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms_and_refuses_others() {
        assert_eq!(ComputeDevice::parse("cpu").unwrap(), ComputeDevice::Cpu);
        assert_eq!(
            ComputeDevice::parse("cuda").unwrap(),
            ComputeDevice::Cuda(0)
        );
        assert_eq!(
            ComputeDevice::parse("cuda:3").unwrap(),
            ComputeDevice::Cuda(3)
        );
        assert!(ComputeDevice::parse("tpu").is_err());
        assert!(ComputeDevice::parse("cuda:x").is_err());
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn a_cpu_build_asked_for_the_gpu_says_how_to_get_it() {
        let err = ComputeDevice::Cuda(0).open().unwrap_err();
        assert!(err.to_string().contains("--features gpu"), "{err}");
    }
}
