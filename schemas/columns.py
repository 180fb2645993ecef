"""Column names shared by every stage. Import these instead of spelling names inline."""

# Canonical events
USER_ID = "user_id"  # dense UInt32, 0..n_users-1
ITEM_ID = "item_id"  # dense UInt32, 0..n_items-1
BEHAVIORS = "behaviors"  # UInt16 bitmask over the dataset's behavior vocabulary (bit i = behaviors[i])
TIMESTAMP = "timestamp"  # Int64 milliseconds since the Unix epoch (UTC); null when the dataset has no time
EVENT_ORDER = "event_order"  # Int64 stable file order: (file index << 40) | line; the tie-break for equal times
SOURCE_FILE = "source_file"  # name of the raw file the row came from
SOURCE_LINE = "source_line"  # 1-based line number in that file (the header, if any, is line 1)

# Id maps
RAW_USER_ID = "raw_user_id"
RAW_ITEM_ID = "raw_item_id"

# Item side info
CATEGORY_ID = "category_id"
CATEGORY_PATH = "category_path"  # readable category names, most general first, joined by " > "
BRAND_ID = "brand_id"
SELLER_ID = "seller_id"
CAPTION_TOKENS = "caption_tokens"  # anonymized caption token ids as published (KuaiSAR)

# Quarantine
REASON = "reason"
RAW_TEXT = "raw_text"

EVENT_COLUMNS = (USER_ID, ITEM_ID, BEHAVIORS, TIMESTAMP, EVENT_ORDER, SOURCE_FILE, SOURCE_LINE)
SIDE_INFO_COLUMNS = (ITEM_ID, RAW_ITEM_ID, CATEGORY_ID, CATEGORY_PATH, BRAND_ID, SELLER_ID, CAPTION_TOKENS)
QUARANTINE_COLUMNS = (SOURCE_FILE, SOURCE_LINE, REASON, RAW_TEXT)

# Bits reserved in EVENT_ORDER for the line number within one file.
LINE_BITS = 40
MAX_BEHAVIORS = 16
