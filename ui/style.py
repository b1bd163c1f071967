"""Shared look: the CSS for badges and the compact tables the tabs render as HTML."""

CSS = """
.ab-badge { color: #fff; border-radius: 4px; padding: 1px 7px; font-size: 0.85em; white-space: nowrap; }
table.ab-doctor, table.ab-telemetry { width: 100%; border-collapse: collapse; font-size: 0.9em; }
table.ab-doctor td, table.ab-doctor th, table.ab-telemetry td, table.ab-telemetry th {
  border-bottom: 1px solid var(--border-color-primary); padding: 4px 6px; text-align: left; vertical-align: top;
}
td.ab-fix { white-space: pre-wrap; font-family: var(--font-mono); font-size: 0.85em; }
.ab-no-gpu { font-weight: 600; }
#device-banner p { margin: 0; }
"""
