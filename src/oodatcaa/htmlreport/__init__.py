"""``oodatcaa report --html``: one self-contained, offline HTML page per sprint (issue 10 part 3).

:mod:`.metrics` reads a run's ``metrics.jsonl`` tolerantly, :mod:`.charts` builds the Vega-Lite specs
(stored as JSON next to the metrics), :mod:`.page` renders the page with every chart as inline SVG
(``vl_convert.vegalite_to_svg``), so the page makes no network request at all.
"""

from oodatcaa.htmlreport.page import render_sprint_report, write_sprint_report

__all__ = ["render_sprint_report", "write_sprint_report"]
