"""Numerical kernels: plain functions over NumPy arrays, one block in,
sufficient statistics out. No Dask or xarray here."""
