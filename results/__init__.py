"""Results: run folders -> tables in the papers' layout (``collect``), the tables' declarations
(``tables``, over ``configs/tables/``), figures (``plots``) and the regression check's baselines."""
