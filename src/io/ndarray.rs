//! `Tensor` ↔ `ndarray::ArrayD<f32>` (the `ndarray` cargo feature).

use ::ndarray::{ArrayD, IxDyn};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// An f32 tensor on `device` holding `array`'s elements in logical
    /// (row-major) order, whatever the array's memory layout or strides.
    ///
    /// Needs the `ndarray` cargo feature.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use wgrad::{Device, Tensor};
    /// # fn main() -> wgrad::Result<()> {
    /// let a = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    /// let t = Tensor::from_ndarray(&Device::cpu(), &a)?;
    /// assert_eq!(t.shape(), &[2, 2]);
    /// assert_eq!(t.to_ndarray()?, a);
    /// # Ok(()) }
    /// ```
    pub fn from_ndarray(device: &Device, array: &ArrayD<f32>) -> Result<Tensor> {
        let data: Vec<f32> = match array.as_slice() {
            Some(s) => s.to_vec(),
            None => array.iter().copied().collect(),
        };
        Tensor::from_slice(device, &data, array.shape())
    }

    /// The data of an f32 tensor as an `ndarray::ArrayD<f32>` of the same
    /// shape (read back from the GPU if needed). Other dtypes are an
    /// [`Error::DType`].
    ///
    /// Needs the `ndarray` cargo feature.
    pub fn to_ndarray(&self) -> Result<ArrayD<f32>> {
        self.expect_f32("to_ndarray")?;
        let data = self.to_vec::<f32>()?;
        ArrayD::from_shape_vec(IxDyn(self.shape()), data).map_err(|e| Error::Invalid {
            op: "to_ndarray",
            detail: e.to_string(),
        })
    }
}
