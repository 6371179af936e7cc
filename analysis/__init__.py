"""mtl-litmus analysis: read a study's Parquet results, select, score, test, rank, plot, report.

Pure functions over tidy pandas frames. No Ray and no torch imports in this package.

Data flow (``litmus analyze PATH --out DIR``)::

    io.find_studies(PATH)            study folders (study.json), local or object storage
    pipeline.analyze(studies, opts)  per problem: read its rows (io), select each trial's epoch on the
                                     validation split (select), Delta_m vs the reference (scores);
                                     then tests over seeds, ranks and tests across problems (stats)
    report.write(analysis, DIR)      report.md, self-contained report.html, figures/ (plots), tables/

Modules: :mod:`analysis.schema` (the results contract, shared with the writer), :mod:`analysis.io`,
:mod:`analysis.select`, :mod:`analysis.scores`, :mod:`analysis.stats`, :mod:`analysis.pipeline`,
:mod:`analysis.plots`, :mod:`analysis.report`, :mod:`analysis.cli`, :mod:`analysis.errors`, and
:mod:`analysis.synthetic` (synthetic studies in the results layout, for tests and benchmarks).
"""
