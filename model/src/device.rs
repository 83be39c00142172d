//! Choosing the compute backend at run time: burn's wgpu backend on a real GPU, burn-flex on a
//! machine without one, CUDA when built with `--features cuda`.
//!
//! `auto` picks wgpu only when an adapter is a real GPU (discrete, integrated or virtual): a CPU
//! adapter such as lavapipe is 30–60× slower than flex for matmuls.

use burn::tensor::{Device, DeviceKind};

/// What the user asked for (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Wgpu,
    Cpu,
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            "cpu" | "flex" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

/// The backend a device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Flex,
    Wgpu,
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "cpu (flex)",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown backend `{0}`: expected auto, wgpu, cpu or cuda")]
    Unknown(String),
    #[error("no wgpu adapter (Vulkan, Metal, DX12 or GL) was found; install a GPU driver, or mesa-vulkan-drivers for the CPU emulation, or use --backend cpu")]
    NoAdapter,
    #[error("the wgpu device could not be started: {0}")]
    Init(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("this build has no CUDA backend; rebuild with `--features cuda` (see README)")]
    NoCuda,
}

/// The largest buffer a wgpu kernel may bind whole on every adapter we target (WebGPU's default
/// `max_storage_buffer_binding_size`; lavapipe and many integrated GPUs stop there).
pub const WGPU_MAX_BINDING_BYTES: usize = 128 << 20;

/// Where a lookup table of `bytes` lives: on `device`, except a table too large for one wgpu
/// binding (the 0.6B/1.6B token embeddings: 544 MB/932 MB in f32), which stays in host memory
/// (the CPU backend) so only the gathered rows go to the GPU. Autodiff devices keep it on the
/// device (training gathers through the tape).
pub fn table_device(device: &Device, bytes: usize) -> Device {
    if bytes > WGPU_MAX_BINDING_BYTES && !device.is_autodiff() && vgt_shaders::is_wgpu(device) {
        Device::flex()
    } else {
        device.clone()
    }
}

/// A chosen device with what it runs on.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    pub device: Device,
    pub kind: BackendKind,
    /// Human-readable adapter name.
    pub name: String,
    /// wgpu runs on a software (CPU) adapter such as lavapipe: far slower than the CPU backend.
    pub cpu_adapter: bool,
}

/// One wgpu adapter as the system reports it.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub api: String,
    pub device_type: String,
    pub is_cpu: bool,
}

/// Lists the wgpu adapters of this machine (empty when there is no driver).
pub fn wgpu_adapters() -> Vec<AdapterSummary> {
    use burn::tensor::wgpu::wgpu;
    // Vulkan, Metal and DX12 only (burn's wgpu backend runs on these): starting OpenGL/EGL just
    // to list its adapters printed EGL and "XDG_RUNTIME_DIR is invalid" errors on every headless
    // run. `WGPU_BACKEND` still overrides the choice.
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            AdapterSummary {
                name: info.name.clone(),
                api: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                is_cpu: matches!(info.device_type, wgpu::DeviceType::Cpu),
            }
        })
        .collect()
}

fn wgpu_kind(adapters: &[AdapterSummary]) -> Option<(DeviceKind, String)> {
    let find = |t: &str| adapters.iter().find(|a| a.device_type == t);
    for (t, kind) in [
        ("DiscreteGpu", DeviceKind::DiscreteGpu(0)),
        ("IntegratedGpu", DeviceKind::IntegratedGpu(0)),
        ("VirtualGpu", DeviceKind::VirtualGpu(0)),
        ("Cpu", DeviceKind::Cpu),
    ] {
        if let Some(a) = find(t) {
            return Some((kind, format!("{} ({}, {})", a.name, a.api, a.device_type)));
        }
    }
    None
}

/// Starts a wgpu device on the best adapter (a CPU adapter only if nothing else exists).
/// The runtime can be registered once per process, so the first result is kept and shared.
pub fn wgpu_device() -> Result<ComputeDevice, DeviceError> {
    static WGPU: std::sync::OnceLock<Result<ComputeDevice, String>> = std::sync::OnceLock::new();
    let started = WGPU.get_or_init(|| {
        let adapters = wgpu_adapters();
        let (kind, name) = wgpu_kind(&adapters).ok_or_else(|| DeviceError::NoAdapter.to_string())?;
        let cpu_adapter = matches!(kind, DeviceKind::Cpu);
        let device = Device::wgpu_options().device_kind(kind).init().map_err(|e| DeviceError::Init(e.to_string()).to_string())?;
        Ok(ComputeDevice { device, kind: BackendKind::Wgpu, name, cpu_adapter })
    });
    started.clone().map_err(DeviceError::Unavailable)
}

/// The flex CPU device.
pub fn cpu_device() -> ComputeDevice {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    ComputeDevice { device: Device::flex(), kind: BackendKind::Flex, name: format!("CPU, {threads} threads"), cpu_adapter: false }
}

/// Resolves a [`BackendChoice`] to a running device.
pub fn select(choice: BackendChoice) -> Result<ComputeDevice, DeviceError> {
    match choice {
        BackendChoice::Cpu => Ok(cpu_device()),
        BackendChoice::Wgpu => wgpu_device(),
        BackendChoice::Cuda => cuda_device(),
        BackendChoice::Auto => {
            let adapters = wgpu_adapters();
            if adapters.iter().any(|a| !a.is_cpu) {
                match wgpu_device() {
                    Ok(d) => return Ok(d),
                    Err(e) => log::warn!("falling back to the CPU backend: {e}"),
                }
            } else if cfg!(feature = "cuda") {
                if let Ok(d) = cuda_device() {
                    return Ok(d);
                }
            }
            Ok(cpu_device())
        }
    }
}

/// CUDA device 0, started and tried with one small tensor: without a driver, cudarc panics
/// ("Unable to dynamically load the cuda shared library"); that becomes a clear error here. The
/// panic hook is silenced during the try so that nothing is printed twice.
#[cfg(feature = "cuda")]
fn cuda_device() -> Result<ComputeDevice, DeviceError> {
    cuda_device_at(0)
}

/// CUDA devices 0..n, each started and tried (for data-parallel training).
pub fn cuda_devices(n: usize) -> Result<Vec<ComputeDevice>, DeviceError> {
    #[cfg(feature = "cuda")]
    {
        (0..n).map(cuda_device_at).collect()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = n;
        Err(DeviceError::NoCuda)
    }
}

/// CUDA device `index`, started and tried with one small tensor.
#[cfg(feature = "cuda")]
fn cuda_device_at(index: usize) -> Result<ComputeDevice, DeviceError> {
    use burn::tensor::{Tensor, TensorData};
    if !libcuda_loadable() {
        return Err(DeviceError::Unavailable(
            "CUDA is unavailable on this machine: the NVIDIA driver library (libcuda.so.1) was not found; install the NVIDIA driver, or use --backend wgpu or cpu".into(),
        ));
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let tried = std::panic::catch_unwind(|| {
        let device = Device::cuda(index);
        let _ = Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), &device).into_data();
        device
    });
    std::panic::set_hook(hook);
    match tried {
        Ok(device) => Ok(ComputeDevice { device, kind: BackendKind::Cuda, name: format!("CUDA device {index}"), cpu_adapter: false }),
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA runtime failed to start".into());
            Err(DeviceError::Unavailable(format!("CUDA device {index} is unavailable on this machine ({why}); install the NVIDIA driver, or use --backend wgpu or cpu")))
        }
    }
}

/// Whether the NVIDIA driver library can be loaded (what cudarc will try; asked first so that a
/// machine without it gets one clear sentence instead of the runtime's panic and warnings).
#[cfg(all(feature = "cuda", target_os = "linux"))]
fn libcuda_loadable() -> bool {
    use std::ffi::{CString, c_char, c_int, c_void};
    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlclose(handle: *mut c_void) -> c_int;
    }
    const RTLD_LAZY: c_int = 1;
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        let Ok(name) = CString::new(*name) else { return false };
        // SAFETY: a valid C string; the handle is closed at once and never used otherwise.
        let handle = unsafe { dlopen(name.as_ptr(), RTLD_LAZY) };
        if handle.is_null() {
            return false;
        }
        // SAFETY: `handle` came from dlopen above.
        unsafe { dlclose(handle) };
        true
    })
}

/// Other systems: let the runtime try.
#[cfg(all(feature = "cuda", not(target_os = "linux")))]
fn libcuda_loadable() -> bool {
    true
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<ComputeDevice, DeviceError> {
    Err(DeviceError::NoCuda)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(t: &str) -> AdapterSummary {
        AdapterSummary { name: t.into(), api: "Vulkan".into(), device_type: t.into(), is_cpu: t == "Cpu" }
    }

    #[test]
    fn prefers_real_gpus_over_cpu_adapters() {
        let (kind, _) = wgpu_kind(&[adapter("Cpu"), adapter("IntegratedGpu")]).unwrap();
        assert_eq!(kind, DeviceKind::IntegratedGpu(0));
        let (kind, _) = wgpu_kind(&[adapter("Cpu")]).unwrap();
        assert_eq!(kind, DeviceKind::Cpu);
        assert!(wgpu_kind(&[]).is_none());
    }

    #[test]
    fn parses_backend_names() {
        assert_eq!("WGPU".parse::<BackendChoice>().unwrap(), BackendChoice::Wgpu);
        assert_eq!("cpu".parse::<BackendChoice>().unwrap(), BackendChoice::Cpu);
        assert!("tpu".parse::<BackendChoice>().is_err());
    }
}
