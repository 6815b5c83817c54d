//! File formats: NumPy `.npy` and safetensors — being written.
