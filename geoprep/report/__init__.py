"""The inspection report: figures and one self-contained report.html, drawn after inspecting."""
