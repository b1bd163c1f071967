"""Shared look: the CSS for badges, the compact tables the tabs render as HTML, the small header (banner,
telemetry strip, a tab bar that wraps) that leaves each tab's first screen to the tab, option fields whose labels
and values can be read on a laptop and on a phone, example thumbnails that wrap on a narrow screen, result
boxes shown only when they hold something, and the words Gradio's page lacks."""

# A component with this class is out of sight while it is empty: a result that only some runs make (the Portrait
# tab's motion template: LivePortrait runs that save one) would otherwise stand as a large empty box. Pure CSS, so
# the handlers that fill it need not also say when to show it.
HIDDEN_WHEN_EMPTY = "ab-hidden-when-empty"

# Words Gradio's page asks for but its own translations lack (launch(i18n=...) adds them): Gradio 6.31 tells screen
# readers that an event finished with the key "common.complete", which only its chat widget's table defines, so
# they read out "common.complete". Other languages fall back to these.
MISSING_TRANSLATIONS = {"en": {"common.complete": "Complete"}}

CSS = """
.ab-badge { color: #fff; border-radius: 4px; padding: 1px 7px; font-size: 0.85em; white-space: nowrap; }
.ab-scroll { overflow-x: auto; max-width: 100%; }
table.ab-doctor, table.ab-telemetry { width: 100%; border-collapse: collapse; font-size: 0.9em; }
table.ab-doctor { min-width: 44em; }
table.ab-doctor td, table.ab-doctor th, table.ab-telemetry td, table.ab-telemetry th {
  border-bottom: 1px solid var(--border-color-primary); padding: 4px 6px; text-align: left; vertical-align: top;
}
table.ab-telemetry td { white-space: nowrap; }
.ab-fix { white-space: pre-wrap; font-family: var(--font-mono); font-size: 0.85em; min-width: 16em; }
.ab-no-gpu { font-weight: 600; }

#ab-header { gap: 2px; }
#device-banner p { margin: 0; line-height: 1.4; }
#telemetry-strip-row { gap: 8px; align-items: flex-start; flex-wrap: nowrap; }
#telemetry-strip .html-container { padding: 0; }
#telemetry-toggle { flex: none; padding: 0 8px; min-height: 0; height: 22px; font-size: 0.8em; white-space: nowrap; }
.ab-strip { font-size: 0.82em; line-height: 20px; font-variant-numeric: tabular-nums; }
.ab-strip-line { display: flex; flex-wrap: wrap; align-items: center; column-gap: 14px; }
.ab-metric { display: inline-flex; align-items: center; gap: 5px; white-space: nowrap; }
.ab-dim { color: var(--body-text-color-subdued); }
.ab-spark {
  width: 60px; height: 16px; flex: none; fill: none; stroke: var(--color-accent); stroke-width: 1.5;
  stroke-linejoin: round; stroke-linecap: round; background: rgba(127, 127, 127, 0.1); border-radius: 2px;
}
#telemetry-panel { gap: 6px; }
@media (max-width: 640px) { .ab-gpu-name { display: none; } }  /* a phone: the System tab names the GPUs */

/* Every tab stays reachable on a phone: the bar wraps (Tabs(overflow_behavior="wrap")) with compact buttons. */
#ab-tabs .tab-wrapper { height: auto; }
#ab-tabs [role="tablist"] { flex-wrap: wrap; }
#ab-tabs [role="tab"] { padding: 6px 12px; height: auto; }

/* Option fields. Gradio 6.31 gives a checkbox no minimum width, so in a row beside other fields its label was
   squeezed into a column a few letters wide: it gets the 160 px the others have, and wraps to a line of its own
   where that does not fit. A word wider than its field's label (a long file name) wraps rather than being cut off. */
.form > .block:has(> label.checkbox-container) { min-width: min(160px, 100%) !important; }
[data-testid="block-info"], label.checkbox-container .label-text { overflow-wrap: break-word; }

/* Example thumbnails (ui/examples.py): as many a row as fit at 110 px or more, so on a phone they wrap onto a second
   row instead of one running off the screen's edge; each wide enough for its caption. */
.ab-examples .grid-wrap .grid-container { grid-template-columns: repeat(auto-fit, minmax(110px, 1fr)); }
"""
CSS += f".{HIDDEN_WHEN_EMPTY}:has(> .empty) {{ display: none; }}\n"  # Gradio shows an empty value as its .empty
