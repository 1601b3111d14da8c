"""Result rows as a Parquet file: the columns of RESULT_COLUMNS, written a row group at a time.

Torch-free (pyarrow only), so the API writes the files it serves and a worker the objects a job
asks for with the same code. Memory holds one row group of rows, never the whole set.
"""

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from grocery.listing import chunked
from grocery.results import RESULT_COLUMNS, row_values

# Rows per row group: a reader's unit of skipping and of parallel reads. A test may pass a smaller one.
ROW_GROUP_SIZE = 10_000
MEDIA_TYPE = "application/vnd.apache.parquet"

# top5 as a list of structs, not JSON text: a reader gets columns it can filter and explode
# (pandas, DuckDB, Spark) without parsing strings, and the struct costs no more code to write.
TOP5 = pa.list_(pa.struct([("label", pa.string()), ("class_id", pa.int64()), ("confidence", pa.float64())]))
COLUMN_TYPES = {
    "path": pa.string(),
    "label": pa.string(),
    "class_id": pa.int64(),
    "confidence": pa.float64(),
    "top5": TOP5,
    "error_code": pa.string(),
    "error_message": pa.string(),
    "true_label": pa.string(),
}
# In RESULT_COLUMNS' order; a column added there without a type here fails at import, not in a file.
SCHEMA = pa.schema([pa.field(name, COLUMN_TYPES[name], nullable=name != "path") for name in RESULT_COLUMNS])


def write_results(rows: Iterable, path: str | Path, *, row_group_size: int = ROW_GROUP_SIZE) -> int:
    """Write flat result rows (mappings, or objects with RESULT_COLUMNS attributes, as
    ``row_values`` reads them) to ``path`` in row groups of ``row_group_size``; returns how many.
    No rows still make a valid file: the schema and no row group."""
    count = 0
    with pq.ParquetWriter(str(path), SCHEMA) as writer:
        for batch in chunked(rows, row_group_size):
            columns = zip(*(row_values(row) for row in batch), strict=True)
            arrays = [pa.array(values, type=field.type) for values, field in zip(columns, SCHEMA, strict=True)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA), row_group_size=row_group_size)
            count += len(batch)
    return count
