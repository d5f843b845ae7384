//! Headless GPU set-up, in the explicit steps of wgpu's hello_compute: instance -> adapter ->
//! check compute support -> device with the limits the trainer needs, requested explicitly.
//! Errors (validation, out of memory, device loss) are captured, never panicked on, and reported
//! naming the operation that was running.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use wgpu::util::DeviceExt;

/// Storage buffers one shader stage binds at most (the fast conv2d binds eleven: its dimensions,
/// the per-step words, eight tensors and the split-K scratch).
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 11;

/// How a GPU was chosen: `--adapter NAME` (or `WGPU_ADAPTER_NAME`), and `WGPU_BACKEND`.
#[derive(Debug, Clone, Default)]
pub struct AdapterChoice {
    /// Case-insensitive part of the adapter's name.
    pub name: Option<String>,
}

/// The device and queue with what we know of the adapter; shared by the executor and the op tests.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Whether the device was opened with timestamp queries (`bench --profile` then times every
    /// kernel on the GPU's clock without waiting between kernels).
    pub timestamps: bool,
    /// Whether the device was opened with subgroup operations (subgroups of 8 invocations or
    /// more), which the fast convolution and dense kernels need; without them (or with
    /// WGCNN_NO_SUBGROUPS=1) the portable kernels run instead.
    pub subgroups: bool,
    errors: Arc<Mutex<Vec<String>>>,
}

const NO_ADAPTER_HELP: &str = "no usable GPU adapter was found. Install your GPU's driver (Vulkan, Metal or DX12), \
or a software Vulkan adapter: on Debian or Ubuntu `apt-get install libvulkan1 mesa-vulkan-drivers`. \
WGPU_BACKEND (vulkan, metal or dx12; this build has no GL backend) chooses the API; run without --gpu to train on the CPU";

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

impl Gpu {
    /// Open the chosen adapter, or the default one (`WGPU_ADAPTER_NAME` and `WGPU_BACKEND` apply).
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        pollster::block_on(Self::new_async(choice))
    }

    async fn new_async(choice: &AdapterChoice) -> Result<Gpu> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let wanted = choice
            .name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|n| !n.is_empty());
        check_backend_env()?;
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let adapters = instance.enumerate_adapters(backends).await;
        let adapter = match &wanted {
            Some(_) if adapters.is_empty() => bail!("{NO_ADAPTER_HELP}"),
            Some(name) => {
                let lower = name.to_lowercase();
                let found = adapters
                    .iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&lower))
                    .cloned();
                match found {
                    Some(a) => a,
                    None => {
                        let names: Vec<String> =
                            adapters.iter().map(|a| describe(&a.get_info())).collect();
                        bail!(
                            "no GPU adapter's name contains '{name}'; available: {}",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        );
                    }
                }
            }
            None => {
                let options = wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                };
                match instance.request_adapter(&options).await {
                    Ok(a) => a,
                    Err(_) if !adapters.is_empty() => adapters[0].clone(),
                    Err(e) => bail!("{NO_ADAPTER_HELP} ({e})"),
                }
            }
        };
        let info = adapter.get_info();
        let downlevel = adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            bail!(
                "the adapter {} cannot run compute shaders; {NO_ADAPTER_HELP}",
                describe(&info)
            );
        }
        let available = adapter.limits();
        if available.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_PER_STAGE {
            bail!(
                "the adapter {} binds {} storage buffers per shader stage; the trainer needs {STORAGE_BUFFERS_PER_STAGE}",
                describe(&info),
                available.max_storage_buffers_per_shader_stage
            );
        }
        // The adapter's real limits, not wgpu's defaults: the full buffer sizes (the data set and
        // large evaluation batches use them), and the workgroup memory and invocations the tiled
        // kernels may use where the adapter has them.
        let limits = available;
        // Optional features, used where the adapter offers them and never required: timestamp
        // queries for `bench --profile` (WGCNN_NO_TIMESTAMPS=1 turns them off, to check the
        // fallback).
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY)
            && std::env::var_os("WGCNN_NO_TIMESTAMPS").is_none_or(|v| v.is_empty() || v == "0");
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size >= 8
            && std::env::var_os("WGCNN_NO_SUBGROUPS").is_none_or(|v| v.is_empty() || v == "0");
        let mut features = wgpu::Features::empty();
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgcnn"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .with_context(|| format!("opening the device on {}", describe(&info)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                sink.lock()
                    .unwrap()
                    .push(format!("the GPU device was lost ({reason:?}): {message}"));
            }
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            timestamps,
            subgroups,
            errors,
        })
    }

    /// "NAME (Backend, DeviceType)".
    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    /// Fail, naming `operation`, if any GPU error was reported since the last check.
    pub fn check(&self, operation: &str) -> Result<()> {
        let mut errors = self.errors.lock().unwrap();
        if errors.is_empty() {
            return Ok(());
        }
        let all = std::mem::take(&mut *errors).join("\n");
        Err(anyhow!("GPU error during {operation}: {all}"))
    }

    /// Wait for all submitted work, without hanging forever if the device is lost.
    pub fn wait(&self, operation: &str) -> Result<()> {
        loop {
            let result = self.device.poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(Duration::from_secs(5)),
            });
            self.check(operation)?;
            match result {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::Timeout) => continue, // still working (a long epoch on a software adapter)
                Err(e) => bail!("GPU error during {operation}: {e}"),
            }
        }
    }

    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn storage_init(&self, label: &str, contents: &[u8]) -> wgpu::Buffer {
        let mut padded;
        let contents = if contents.is_empty() || !contents.len().is_multiple_of(4) {
            padded = contents.to_vec();
            padded.resize(contents.len().max(4).next_multiple_of(4), 0);
            &padded[..]
        } else {
            contents
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A small read-only buffer of constants (an op's dimensions, the per-step words).
    ///
    /// These are storage buffers, not uniform buffers, on purpose: Mesa's lavapipe inlines the
    /// values of uniforms that a shader's control flow depends on and recompiles the shader every
    /// time its descriptor set is bound, that is at every submission. The loss kernel cost 10-60 ms
    /// per training step that way on llvmpipe, whatever the batch; read from a storage buffer it
    /// costs 0.15 ms (measured with one dispatch per submission, same values).
    pub fn constants(&self, label: &str, words: &[u32]) -> wgpu::Buffer {
        let mut padded = words.to_vec();
        padded.resize(words.len().next_multiple_of(4).max(4), 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(&padded),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Copy buffers back to the host (one staging buffer, one wait) and return their bytes.
    pub fn read_buffers(&self, buffers: &[&wgpu::Buffer], operation: &str) -> Result<Vec<Vec<u8>>> {
        let total: u64 = buffers.iter().map(|b| b.size()).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back staging"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(operation),
            });
        let mut offset = 0;
        for b in buffers {
            encoder.copy_buffer_to_buffer(b, 0, &staging, offset, b.size());
            offset += b.size();
        }
        self.queue.submit(Some(encoder.finish()));
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.wait(operation)?;
        match pollster::block_on(receiver.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                bail!("GPU error during {operation}: mapping the read-back buffer failed: {e}")
            }
            None => bail!("GPU error during {operation}: the read-back was cancelled"),
        }
        let mut out = Vec::with_capacity(buffers.len());
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| anyhow!("GPU error during {operation}: {e}"))?;
            let mut offset = 0usize;
            for b in buffers {
                out.push(view[offset..offset + b.size() as usize].to_vec());
                offset += b.size() as usize;
            }
        }
        staging.unmap();
        self.check(operation)?;
        Ok(out)
    }

    /// Read f32 buffers back, each cut to its length.
    pub fn read_f32(
        &self,
        buffers: &[(&wgpu::Buffer, usize)],
        operation: &str,
    ) -> Result<Vec<Vec<f32>>> {
        let bytes = self.read_buffers(
            &buffers.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
            operation,
        )?;
        Ok(bytes
            .iter()
            .zip(buffers)
            .map(|(b, &(_, len))| bytemuck::pod_collect_to_vec::<u8, f32>(&b[..len * 4]))
            .collect())
    }
}

/// `WGPU_BACKEND`, if set, names only APIs wgpu knows: wgpu ignores unknown names, which would
/// leave no adapter and a misleading "no GPU" message.
fn check_backend_env() -> Result<()> {
    let Ok(value) = std::env::var("WGPU_BACKEND") else {
        return Ok(());
    };
    const KNOWN: &[&str] = &[
        "vulkan",
        "vk",
        "metal",
        "mtl",
        "dx12",
        "d3d12",
        "gl",
        "gles",
        "opengl",
        "webgpu",
        "primary",
        "secondary",
    ];
    for name in value.split(',').map(|n| n.trim().to_lowercase()) {
        if !KNOWN.contains(&name.as_str()) {
            bail!(
                "WGPU_BACKEND={value}: '{name}' is not a graphics API; expected vulkan, metal or dx12 (comma-separated)"
            );
        }
    }
    Ok(())
}
