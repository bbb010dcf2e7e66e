"""The study's demos and its inside view on the API's side: what they return (schemas), the nets
and data they run on (sources) and their plots (plots). The science is in `bnlab.models`
(collapse, probes, recalibration); the routes are in `bnlab.api.study.routes`."""
