"""The Colab tour executes top to bottom (headless, fresh kernel, tiny settings)."""

import os

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "dmt_tour.ipynb")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_tour_notebook_executes():
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
  client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()      # raises CellExecutionError naming the failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
