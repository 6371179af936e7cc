"""mtl-litmus analysis: read a study's Parquet results, select, score, test, rank, plot, report.

Pure functions over tidy pandas frames. No Ray and no torch imports in this package.
"""
