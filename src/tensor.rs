//! `Tensor`: a shape, a dtype and contiguous data on a device (a pooled wgpu
//! storage buffer, or host memory for the CPU reference). Clones share data;
//! reshape is a view. Ops are methods defined beside their kernels in `ops/`.

use std::borrow::Cow;
use std::sync::Arc;

use crate::device::{Device, DeviceInner};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::gpu::pool::GpuBuffer;
use crate::shape::Shape;

#[derive(Clone)]
pub(crate) enum Storage {
    Gpu(Arc<GpuBuffer>),
    /// Host words (4-byte aligned so any 4-byte element can be viewed in place).
    Cpu(Arc<Vec<u32>>),
    /// An f32 tensor of the double-precision reference ([`Device::cpu_f64`]).
    CpuWide(Arc<Vec<f64>>),
}

/// An n-dimensional array on a [`Device`].
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    dtype: DType,
    device: Device,
    storage: Storage,
}

impl Tensor {
    /// A tensor holding `data` (row-major) with the given shape.
    pub fn from_slice<T: Element>(device: &Device, data: &[T], shape: &[usize]) -> Result<Tensor> {
        crate::shape::checked_numel("from_slice", shape)?;
        let shape = Shape::new(shape);
        if data.len() != shape.numel() {
            return Err(Error::DataLength {
                op: "from_slice",
                len: data.len(),
                shape: shape.dims().to_vec(),
                expected: shape.numel(),
            });
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let storage = match &device.inner {
            DeviceInner::Gpu(g) => {
                g.check_buffer("from_slice", shape.dims(), bytes.len() as u64)?;
                Storage::Gpu(Arc::new(g.upload(bytes)?))
            }
            DeviceInner::Cpu if device.wide && T::DTYPE == DType::F32 => {
                Storage::CpuWide(Arc::new(
                    bytemuck::cast_slice::<T, f32>(data)
                        .iter()
                        .map(|&v| v as f64)
                        .collect(),
                ))
            }
            DeviceInner::Cpu => Storage::Cpu(Arc::new(words_of(bytes))),
        };
        Ok(Tensor {
            shape,
            dtype: T::DTYPE,
            device: device.clone(),
            storage,
        })
    }

    /// A tensor filled with `value`.
    pub fn full(device: &Device, value: f32, shape: &[usize]) -> Result<Tensor> {
        let n = crate::shape::checked_numel("full", shape)?;
        if let Some(g) = device.gpu_ctx() {
            // Refuse before building a host vector of that size.
            g.check_buffer("full", shape, (n * 4) as u64)?;
        }
        Tensor::from_slice(device, &vec![value; n], shape)
    }

    /// A tensor of zeros.
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::full(device, 0.0, shape)
    }

    /// A rank-0 tensor holding one value.
    pub fn scalar(device: &Device, value: f32) -> Result<Tensor> {
        Tensor::from_slice(device, &[value], &[])
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Row-major strides in elements (tensors are always contiguous).
    pub fn strides(&self) -> Vec<usize> {
        self.shape.strides()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the data lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of data.
    pub fn nbytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    /// Reads the data back (blocking).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        pollster::block_on(self.to_vec_async())
    }

    /// Reads the data back; the GPU path maps a staging buffer and awaits it.
    pub async fn to_vec_async<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType {
                op: "to_vec",
                got: self.dtype.to_string(),
                expected: T::DTYPE.to_string(),
            });
        }
        let n = self.numel();
        match &self.storage {
            Storage::Cpu(w) => Ok(bytemuck::cast_slice::<u32, T>(&w[..])
                .get(..n)
                .unwrap_or(&[])
                .to_vec()),
            // T is f32 here (checked above): round the wide values once.
            Storage::CpuWide(w) => {
                let rounded: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                Ok(bytemuck::cast_slice::<f32, T>(&rounded).to_vec())
            }
            Storage::Gpu(b) => {
                let g = self.device.gpu_ctx().ok_or_else(|| Error::Invalid {
                    op: "to_vec",
                    detail: "GPU storage without a GPU device".into(),
                })?;
                let bytes = g.read_async("to_vec", b.raw(), self.nbytes()).await?;
                Ok(bytemuck::pod_collect_to_vec::<u8, T>(&bytes))
            }
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::Shape {
                op: "item",
                detail: format!(
                    "item() needs exactly one element, got shape {:?}",
                    self.shape()
                ),
            });
        }
        Ok(self.to_vec::<f32>()?[0])
    }

    /// An f32 tensor from f64 values: kept exactly on the double-precision
    /// reference ([`Device::cpu_f64`]), rounded to f32 on any other device.
    pub fn from_f64(device: &Device, data: &[f64], shape: &[usize]) -> Result<Tensor> {
        if device.wide {
            let n = crate::shape::checked_numel("from_f64", shape)?;
            if data.len() != n {
                return Err(Error::DataLength {
                    op: "from_f64",
                    len: data.len(),
                    shape: shape.to_vec(),
                    expected: n,
                });
            }
            return Ok(Tensor::cpu_from_f64(device, shape, data.to_vec()));
        }
        let rounded: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        Tensor::from_slice(device, &rounded, shape)
    }

    /// Reads an f32 tensor back as f64: exact values on the double-precision
    /// reference, widened f32 values elsewhere.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        match &self.storage {
            Storage::CpuWide(w) => Ok(w[..self.numel()].to_vec()),
            _ => Ok(self.to_vec::<f32>()?.iter().map(|&v| v as f64).collect()),
        }
    }

    /// The same data on another device.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device.same(device) {
            return Ok(self.clone());
        }
        match self.dtype {
            DType::F32 => Tensor::from_f64(device, &self.to_vec_f64()?, self.shape()),
            DType::I32 => Tensor::from_slice(device, &self.to_vec::<i32>()?, self.shape()),
            DType::U32 => Tensor::from_slice(device, &self.to_vec::<u32>()?, self.shape()),
            DType::F16 => Err(Error::DType {
                op: "to_device",
                got: "f16".into(),
                expected: "f32, i32 or u32".into(),
            }),
        }
    }

    /// The same data under a new shape with the same number of elements (a view;
    /// no copy). One dimension may be `usize::MAX` to be inferred... use [`Tensor::reshape_infer`] for that.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = crate::shape::checked_numel("reshape", shape)?;
        if n != self.numel() {
            return Err(Error::Shape {
                op: "reshape",
                detail: format!(
                    "cannot view {:?} ({} elements) as {shape:?} ({n} elements)",
                    self.shape(),
                    self.numel()
                ),
            });
        }
        let mut t = self.clone();
        t.shape = Shape::new(shape);
        Ok(t)
    }

    /// Reshape where one dimension given as `-1` is inferred.
    pub fn reshape_infer(&self, shape: &[isize]) -> Result<Tensor> {
        let unknown: Vec<usize> = (0..shape.len()).filter(|&i| shape[i] == -1).collect();
        let bad = shape.iter().any(|&d| d < -1) || unknown.len() > 1;
        let known: usize = shape
            .iter()
            .filter(|&&d| d >= 0)
            .map(|&d| d as usize)
            .product();
        if bad || (unknown.len() == 1 && (known == 0 || self.numel() % known != 0)) {
            return Err(Error::Shape {
                op: "reshape",
                detail: format!("cannot view {:?} as {shape:?}", self.shape()),
            });
        }
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| {
                if d == -1 {
                    self.numel() / known.max(1)
                } else {
                    d as usize
                }
            })
            .collect();
        self.reshape(&dims)
    }

    /// Removes dimensions of size 1.
    pub fn squeeze(&self) -> Tensor {
        let dims: Vec<usize> = self.shape().iter().copied().filter(|&d| d != 1).collect();
        let mut t = self.clone();
        t.shape = Shape::new(&dims);
        t
    }

    // ----- crate-internal plumbing used by the op families -----

    pub(crate) fn from_storage(
        device: &Device,
        shape: &[usize],
        dtype: DType,
        storage: Storage,
    ) -> Tensor {
        Tensor {
            shape: Shape::new(shape),
            dtype,
            device: device.clone(),
            storage,
        }
    }

    /// A CPU-reference f32 tensor on `device` from values computed in f64:
    /// rounded to f32 (as a GPU kernel stores them), or kept in f64 on the
    /// double-precision reference.
    pub(crate) fn cpu_from_f64(device: &Device, shape: &[usize], data: Vec<f64>) -> Tensor {
        let storage = if device.wide {
            Storage::CpuWide(Arc::new(data))
        } else {
            let rounded: Vec<f32> = data.iter().map(|&v| v as f32).collect();
            Storage::Cpu(Arc::new(words_of(bytemuck::cast_slice(&rounded))))
        };
        Tensor::from_storage(device, shape, DType::F32, storage)
    }

    /// A CPU-reference tensor on `device` from computed i32 values.
    pub(crate) fn cpu_i32(device: &Device, shape: &[usize], data: Vec<i32>) -> Tensor {
        Tensor::from_storage(
            device,
            shape,
            DType::I32,
            Storage::Cpu(Arc::new(words_of(bytemuck::cast_slice(&data)))),
        )
    }

    /// The values of a CPU f32 tensor in f64 (widened from f32 storage, or
    /// borrowed on the double-precision reference); empty for other tensors.
    pub(crate) fn host_f64(&self) -> Cow<'_, [f64]> {
        match &self.storage {
            Storage::Cpu(w) if self.dtype == DType::F32 => Cow::Owned(
                bytemuck::cast_slice::<u32, f32>(&w[..])[..self.numel()]
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
            ),
            Storage::CpuWide(w) => Cow::Borrowed(&w[..self.numel()]),
            _ => Cow::Borrowed(&[]),
        }
    }

    /// The wide values of an f32 tensor of the double-precision reference.
    pub(crate) fn host_wide(&self) -> Option<&[f64]> {
        match &self.storage {
            Storage::CpuWide(w) => Some(&w[..self.numel()]),
            _ => None,
        }
    }

    /// The GPU buffer and the bytes it holds for this tensor.
    pub(crate) fn gpu_arg(&self) -> Option<(&wgpu::Buffer, u64)> {
        match &self.storage {
            Storage::Gpu(b) => Some((b.raw(), self.nbytes())),
            Storage::Cpu(_) | Storage::CpuWide(_) => None,
        }
    }

    /// Errors unless the tensor is f32.
    pub(crate) fn expect_f32(&self, op: &'static str) -> Result<()> {
        if self.dtype != DType::F32 {
            return Err(Error::DType {
                op,
                got: self.dtype.to_string(),
                expected: "f32".into(),
            });
        }
        Ok(())
    }

    /// Errors unless the tensor is i32 (class labels, indices).
    pub(crate) fn expect_i32(&self, op: &'static str) -> Result<()> {
        if self.dtype != DType::I32 {
            return Err(Error::DType {
                op,
                got: self.dtype.to_string(),
                expected: "i32".into(),
            });
        }
        Ok(())
    }

    /// Errors unless both tensors live on the same device.
    pub(crate) fn expect_same_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if !self.device.same(&other.device) {
            return Err(Error::DeviceMismatch {
                op,
                a: self.device.name(),
                b: other.device.name(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {})",
            self.shape(),
            self.dtype,
            self.device.name()
        )
    }
}

fn words_of(bytes: &[u8]) -> Vec<u32> {
    let mut w = vec![0u32; bytes.len().div_ceil(4)];
    bytemuck::cast_slice_mut::<u32, u8>(&mut w)[..bytes.len()].copy_from_slice(bytes);
    w
}
