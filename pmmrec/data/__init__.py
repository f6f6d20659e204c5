"""Datasets: folder format, MovieLens-100K builder, image LMDB, reference import, split and training loaders."""

from __future__ import annotations

from pmmrec.data.builders import ImageBuildReport, ImageSource, build_image_lmdb, write_dataset
from pmmrec.data.dataset import (
    DATASET_FORMAT_VERSION,
    IMAGE_KINDS,
    SYNTHETIC_IMAGE_NOTE,
    Dataset,
    dataset_fingerprint,
    describe_other_dataset,
    load_dataset,
    read_items_tsv,
    read_users_tsv,
)
from pmmrec.data.image_store import (
    DEFAULT_IMAGE_SIZE,
    ImageStore,
    decode_image_value,
    encode_image_value,
    resize_and_center_crop,
)
from pmmrec.data.loading import (
    WINDOW_SCHEMES,
    BatchCollator,
    EvalBatch,
    EvalSample,
    EvalSequences,
    ItemBatch,
    SequenceBatch,
    TrainSequences,
    tile_ends,
    tokenize_catalogue,
)
from pmmrec.data.movielens import TARGET_GENRES, build_movielens, locate_movielens, read_movielens
from pmmrec.data.new_items import (
    NEW_ITEM_RULES,
    hashed_items,
    hold_out_new_items,
    new_target_mask,
    newest_items,
)
from pmmrec.data.ragged import RaggedArray, item_counts, total_length
from pmmrec.data.readers import ItemInputs, reader_class, register_reader, registered_readers
from pmmrec.data.reference_import import import_reference
from pmmrec.data.split import (
    SPLIT_RECORD,
    LeaveOneOutSplit,
    known_items,
    leave_one_out,
    read_split_record,
    training_items,
    user_share_rows,
    write_split_record,
)
from pmmrec.data.statistics import check_dataset, dataset_statistics, format_statistics
from pmmrec.data.synthetic_images import render_synthetic_image

__all__ = [
    "DATASET_FORMAT_VERSION",
    "DEFAULT_IMAGE_SIZE",
    "IMAGE_KINDS",
    "NEW_ITEM_RULES",
    "SPLIT_RECORD",
    "SYNTHETIC_IMAGE_NOTE",
    "TARGET_GENRES",
    "WINDOW_SCHEMES",
    "BatchCollator",
    "Dataset",
    "EvalBatch",
    "EvalSample",
    "EvalSequences",
    "ImageBuildReport",
    "ImageSource",
    "ImageStore",
    "ItemBatch",
    "ItemInputs",
    "LeaveOneOutSplit",
    "RaggedArray",
    "SequenceBatch",
    "TrainSequences",
    "build_image_lmdb",
    "build_movielens",
    "check_dataset",
    "dataset_fingerprint",
    "dataset_statistics",
    "decode_image_value",
    "describe_other_dataset",
    "encode_image_value",
    "format_statistics",
    "hashed_items",
    "hold_out_new_items",
    "import_reference",
    "item_counts",
    "known_items",
    "leave_one_out",
    "load_dataset",
    "locate_movielens",
    "new_target_mask",
    "newest_items",
    "read_items_tsv",
    "read_movielens",
    "read_split_record",
    "read_users_tsv",
    "reader_class",
    "register_reader",
    "registered_readers",
    "render_synthetic_image",
    "resize_and_center_crop",
    "tile_ends",
    "tokenize_catalogue",
    "total_length",
    "training_items",
    "user_share_rows",
    "write_dataset",
    "write_split_record",
]
