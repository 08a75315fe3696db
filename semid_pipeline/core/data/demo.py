"""A seeded, offline, synthetic beauty / personal-care shop: the pipeline's built-in demo dataset.

The catalog is a three-level category tree (6 level-1 categories, 4 level-2 under each, 3
leaves under each level-2: 72 leaves), items with brands (each brand sells in one to three
level-1 categories; some items have none), titles built from brand, adjective, attribute (scent,
shade, ingredient, material...), the leaf's product noun, an optional audience and a size, and
one or two sentences of description.

Users follow a simple interest process, simulated for all users at once, one step at a time:

* each user has ``n_interests`` preferred leaves (popular leaves more likely) and a favourite
  brand; the first item comes from the first preferred leaf;
* each next item comes from the same leaf as the previous one (``p_same_leaf``), from its
  *complementary* leaf (``p_complement``: the next leaf in its level-2 group, e.g. Shampoo ->
  Conditioner -> Dry Shampoo -> Shampoo), from a sibling leaf (``p_sibling``), from the previous
  item's or the favourite brand within the current level-1 category (``p_same_brand``), or
  else the user drifts to another preferred leaf or, with ``p_new_interest``, to a random leaf;
* inside a leaf (or brand), items are drawn by a Zipf-like popularity over a random ranking;
  a user never gets the same item twice.

Leaves hold items in proportion to their popularity, so no single item dominates: popularity
alone predicts the next item poorly, while the recent items' categories predict it well.
Every item is then given at least ``min_item_count`` interactions by reassigning a few events of
popular items in the same leaf, so a 5-core filter removes nothing. Timestamps are days (unix
seconds at midnight, like Amazon's ``unixReviewTime``) with random gaps, so some consecutive
events tie; ratings follow Amazon's skew towards 5 stars.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from semid_pipeline.core.data.schema import ITEM_COLUMNS, RawDataset
from semid_pipeline.core.params import StrictParams

# ---------------------------------------------------------------------------------------------
# the embedded catalog vocabulary

# level-1 -> [(level-2, style, [(leaf, product noun used in titles), ...]), ...]. Within a level-2
# group the leaves are listed in "complementary" order: the next leaf is what a shopper buys next.
TREE: tuple[tuple[str, tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]], ...] = (
    ("Skin Care", (
        ("Cleansers", "skin", (("Makeup Removers", "Makeup Remover"), ("Face Wash", "Face Wash"),
                               ("Exfoliators & Scrubs", "Exfoliating Scrub"))),
        ("Moisturizers", "skin", (("Toners & Mists", "Toner"), ("Serums", "Serum"), ("Face Creams", "Face Cream"))),
        ("Treatments & Masks", "skin", (("Facial Masks", "Facial Mask"), ("Acne Treatments", "Acne Spot Treatment"),
                                        ("Eye Creams", "Eye Cream"))),
        ("Sun Care", "sun", (("Face Sunscreen", "Face Sunscreen"), ("Body Sunscreen", "Sunscreen Lotion"),
                             ("After-Sun Care", "After-Sun Gel"))),
    )),
    ("Hair Care", (
        ("Shampoo & Conditioner", "hair", (("Shampoo", "Shampoo"), ("Conditioner", "Conditioner"),
                                           ("Dry Shampoo", "Dry Shampoo"))),
        ("Styling Products", "hair", (("Mousse & Foam", "Styling Mousse"), ("Gels & Pomades", "Hair Gel"),
                                      ("Hair Spray", "Hair Spray"))),
        ("Hair Treatments", "hair", (("Hair Masks", "Hair Mask"), ("Hair Oils", "Hair Oil"),
                                     ("Scalp Treatments", "Scalp Serum"))),
        ("Hair Color", "hair_color", (("Permanent Color", "Permanent Hair Color"),
                                      ("Semi-Permanent Color", "Semi-Permanent Hair Color"),
                                      ("Root Touch-Up", "Root Touch-Up Spray"))),
    )),
    ("Makeup", (
        ("Face", "face_makeup", (("Primers", "Face Primer"), ("Foundation", "Foundation"),
                                 ("Setting Powder", "Setting Powder"))),
        ("Eyes", "color_makeup", (("Eyeshadow", "Eyeshadow Palette"), ("Eyeliner", "Eyeliner"),
                                  ("Mascara", "Mascara"))),
        ("Lips", "color_makeup", (("Lip Liner", "Lip Liner"), ("Lipstick", "Lipstick"), ("Lip Gloss", "Lip Gloss"))),
        ("Nails", "color_makeup", (("Base & Top Coats", "Base Coat"), ("Nail Polish", "Nail Polish"),
                                   ("Nail Polish Removers", "Nail Polish Remover"))),
    )),
    ("Bath & Body", (
        ("Cleansers", "body", (("Body Wash", "Body Wash"), ("Bar Soap", "Bar Soap"), ("Bubble Bath", "Bubble Bath"))),
        ("Body Moisturizers", "body", (("Body Lotion", "Body Lotion"), ("Body Butter", "Body Butter"),
                                       ("Body Oil", "Body Oil"))),
        ("Bath Soaks & Scrubs", "body", (("Body Scrubs", "Body Scrub"), ("Bath Salts", "Bath Salts"),
                                         ("Bath Bombs", "Bath Bomb"))),
        ("Deodorants", "body", (("Deodorant", "Deodorant"), ("Antiperspirant", "Antiperspirant"),
                                ("Body Spray", "Body Spray"))),
    )),
    ("Fragrance", (
        ("Women's", "fragrance", (("Eau de Parfum", "Eau de Parfum"), ("Eau de Toilette", "Eau de Toilette"),
                                  ("Body Mist", "Body Mist"))),
        ("Men's", "fragrance", (("Cologne", "Cologne"), ("Aftershave", "Aftershave Balm"),
                                ("Men's Eau de Parfum", "Eau de Parfum for Men"))),
        ("Unisex", "fragrance", (("Perfume Oils", "Roll-On Perfume Oil"), ("Solid Perfume", "Solid Perfume"),
                                 ("Hair Mist", "Hair Mist"))),
        ("Gift Sets", "fragrance", (("Women's Sets", "Fragrance Gift Set for Women"),
                                    ("Men's Sets", "Fragrance Gift Set for Men"),
                                    ("Travel Sprays", "Travel Spray Set"))),
    )),
    ("Tools & Accessories", (
        ("Makeup Brushes & Tools", "tool", (("Foundation Brushes", "Foundation Brush"),
                                            ("Makeup Sponges", "Makeup Sponge"), ("Brush Cleaners", "Brush Cleaner"))),
        ("Hair Tools", "hair_tool", (("Hair Dryers", "Hair Dryer"), ("Flat Irons", "Flat Iron"),
                                     ("Curling Irons", "Curling Wand"))),
        ("Nail Tools", "tool", (("Nail Clippers", "Nail Clipper"), ("Nail Files", "Nail File"),
                                ("Cuticle Pushers", "Cuticle Pusher"))),
        ("Bags & Cases", "tool", (("Makeup Bags", "Makeup Bag"), ("Travel Bottles", "Travel Bottle Set"),
                                  ("Compact Mirrors", "Compact Mirror"))),
    )),
)


class _Style(NamedTuple):
    adjectives: tuple[str, ...]
    attributes: tuple[str, ...]
    audiences: tuple[str, ...]  # "" = no audience
    sizes: tuple[str, ...]
    title: str  # format fields: brand, adj, attr, noun, aud, size
    descriptions: tuple[str, ...]  # format fields: adj, attr, noun, aud (lower case), by


STYLES: dict[str, _Style] = {
    "skin": _Style(
        ("Hydrating", "Brightening", "Soothing", "Gentle", "Oil-Free", "Firming", "Clarifying", "Nourishing"),
        ("Vitamin C", "Hyaluronic Acid", "Retinol", "Aloe Vera", "Green Tea", "Niacinamide", "Rose", "Charcoal",
         "Tea Tree", "Ceramide"),
        (" for Oily Skin", " for Dry Skin", " for Sensitive Skin", " for All Skin Types", " for Combination Skin", ""),
        ("1 fl oz", "1.7 oz", "4 fl oz", "6.7 fl oz", "Pack of 2"),
        "{brand} {adj} {attr} {noun}{aud}, {size}",
        ("A {adj} {noun} with {attr}{by} that leaves skin soft and balanced. Made{aud}, gentle enough for daily use.",
         "This {adj} {noun}{by} is formulated with {attr}{aud}."),
    ),
    "sun": _Style(
        ("Mineral", "Water-Resistant", "Lightweight", "Sheer", "Cooling", "Reef-Safe", "Sport", "Tinted"),
        ("SPF 15", "SPF 30", "SPF 50", "Aloe Vera", "Zinc Oxide", "Vitamin E"),
        (" for Sensitive Skin", " for Kids", " for Face and Body", ""),
        ("3 fl oz", "5 fl oz", "6 oz", "Pack of 2"),
        "{brand} {adj} {attr} {noun}{aud}, {size}",
        ("A {adj} {noun} with {attr}{by} for days outdoors.", "{Adj} {noun}{by} with {attr}, made{aud}."),
    ),
    "hair": _Style(
        ("Volumizing", "Moisturizing", "Smoothing", "Strengthening", "Clarifying", "Color-Safe", "Repairing",
         "Sulfate-Free"),
        ("Argan Oil", "Coconut", "Keratin", "Biotin", "Tea Tree", "Lavender", "Peppermint", "Shea Butter"),
        (" for Curly Hair", " for Fine Hair", " for Color-Treated Hair", " for Damaged Hair", " for All Hair Types",
         ""),
        ("8 fl oz", "12 fl oz", "16.9 fl oz", "33.8 fl oz", "Pack of 2"),
        "{brand} {adj} {attr} {noun}{aud}, {size}",
        ("A {adj} {noun} with {attr}{by}, made{aud}. Leaves hair soft and manageable.",
         "{Adj} {noun} infused with {attr}{by}."),
    ),
    "hair_color": _Style(
        ("Long-Lasting", "Ammonia-Free", "Vibrant", "Natural", "Gray Coverage", "Salon"),
        ("Jet Black", "Dark Brown", "Medium Ash Brown", "Auburn", "Copper Red", "Golden Blonde", "Light Blonde"),
        ("",),
        ("1 Kit", "Pack of 2", "Pack of 3", "2.5 oz"),
        "{brand} {adj} {noun}, {attr}, {size}",
        ("{Adj} {noun} in {attr}{by}, with conditioning treatment included.",
         "A {adj} {noun}{by} in the shade {attr}."),
    ),
    "face_makeup": _Style(
        ("Matte", "Dewy", "Long-Wear", "Full-Coverage", "Lightweight", "Oil-Free", "Radiant", "Poreless"),
        ("Fair Ivory", "Light Beige", "Natural Buff", "Warm Sand", "Golden Tan", "Deep Mocha", "Translucent"),
        ("",),
        ("0.5 oz", "1 fl oz", "1.01 fl oz", "0.35 oz"),
        "{brand} {adj} {noun}, {attr}, {size}",
        ("{Adj} {noun} in {attr}{by} for a smooth, even look.", "A {adj} {noun}{by}; shade: {attr}."),
    ),
    "color_makeup": _Style(
        ("Matte", "Satin", "Shimmer", "Long-Wear", "Waterproof", "Gel", "Velvet", "Metallic"),
        ("Ruby Red", "Nude Pink", "Coral", "Berry", "Mauve", "Plum", "Jet Black", "Bronze", "Rose Gold", "Navy"),
        ("",),
        ("0.12 oz", "0.15 fl oz", "0.5 fl oz", "Set of 3"),
        "{brand} {adj} {noun}, {attr}, {size}",
        ("{Adj} {noun} in {attr}{by}. Rich color that lasts all day.", "A {adj} {noun}{by} in {attr}."),
    ),
    "body": _Style(
        ("Nourishing", "Refreshing", "Calming", "Moisturizing", "Energizing", "Gentle", "Exfoliating", "Natural"),
        ("Lavender", "Coconut", "Vanilla", "Eucalyptus", "Shea Butter", "Citrus", "Oatmeal", "Cherry Blossom"),
        ("", " for Sensitive Skin", " for Men"),
        ("8 fl oz", "12 oz", "16 fl oz", "Pack of 3"),
        "{brand} {adj} {attr} {noun}{aud}, {size}",
        ("A {adj} {noun} scented with {attr}{by}. Leaves skin soft with a light, lasting fragrance.",
         "{Adj} {attr} {noun}{by}, made{aud}."),
    ),
    "fragrance": _Style(
        ("Midnight", "Velvet", "Fresh", "Classic", "Summer", "Intense", "Pure", "Golden"),
        ("Citrus", "Vanilla", "Sandalwood", "Jasmine", "Amber", "Bergamot", "Musk", "Oud"),
        ("",),
        ("1 fl oz", "1.7 fl oz", "3.4 fl oz", "0.33 fl oz"),
        "{brand} {adj} {attr} {noun}, {size}",
        ("{Adj} {attr} {noun}{by} with warm, long-lasting notes.", "A {adj} {noun}{by} built around {attr}."),
    ),
    "tool": _Style(
        ("Professional", "Compact", "Travel-Size", "Ergonomic", "Precision", "Deluxe", "Soft-Touch", "Reusable"),
        ("Stainless Steel", "Bamboo", "Vegan Leather", "Glass", "Rose Gold", "Silicone", "Synthetic Bristle"),
        ("",),
        ("1 Count", "Set of 3", "Pack of 2", "5 Piece Set"),
        "{brand} {adj} {attr} {noun}, {size}",
        ("A {adj} {noun} made of {attr}{by}. Built for everyday use at home or on the go.",
         "{Adj} {attr} {noun}{by}."),
    ),
    "hair_tool": _Style(
        ("Professional", "Ionic", "Compact", "Salon-Grade", "Dual-Voltage", "Fast-Heating"),
        ("Ceramic", "Tourmaline", "Titanium", "Infrared"),
        ("", " for Thick Hair", " for Fine Hair"),
        ("1 Inch", "1.25 Inch", "1875 Watt", "1 Count"),
        "{brand} {adj} {attr} {noun}{aud}, {size}",
        ("A {adj} {noun} with {attr} technology{by}, made{aud}.", "{Adj} {attr} {noun}{by} with adjustable heat."),
    ),
}

# Brand names are an onset joined to an ending, e.g. "Lum" + "ina" -> "Lumina".
_BRAND_ONSETS = ("Lum", "Vel", "Aur", "Cal", "Nov", "Ser", "Mir", "Bel", "Zen", "Flor", "Sol", "Kai", "Ros", "Lys",
                 "Ama", "Eli", "Ver", "Oli", "Cor", "Pur", "Sil", "Dar", "Mel", "Tes", "Ori", "Val", "Neo", "Isa",
                 "Bri", "Ced")
_BRAND_ENDINGS = ("ina", "ette", "elle", "ora", "ique", "ara", "is", "ia", "essa", "ova", "ane", "ea", "ory", "en",
                  "ium", "ette Paris", "a Botanics", "e Labs", "o Naturals", "ara Beauty")
MAX_BRANDS = len(_BRAND_ONSETS) * len(_BRAND_ENDINGS)

N_LEAVES = sum(len(l2[2]) for _, l2s in TREE for l2 in l2s)
EPOCH = 1262304000  # 2010-01-01T00:00:00Z
_DAY = 86400
_HISTORY_DAYS = 6 * 365
_MEAN_GAP_DAYS = 30.0
RATING_P = (0.06, 0.05, 0.09, 0.20, 0.60)  # 1..5 stars, the Amazon review skew
_DRAW_ATTEMPTS = 20  # redraws of the interest process before a repeated item is replaced at random


def check_sequence_lengths(min_seq_len: int, mean_seq_len: float, max_seq_len: int) -> None:
    """The sequence-length knobs of a synthetic generator agree (min <= mean <= max), else ValueError."""
    if max_seq_len < min_seq_len:
        raise ValueError(f"max_seq_len ({max_seq_len}) must be >= min_seq_len ({min_seq_len})")
    if not min_seq_len <= mean_seq_len <= max_seq_len:
        raise ValueError("mean_seq_len must lie between min_seq_len and max_seq_len")


class DemoParams(StrictParams):
    """Size and behaviour of the synthetic demo shop."""

    seed: int = Field(0, description="Random seed; the same seed gives the same dataset.")
    n_items: int = Field(3000, ge=N_LEAVES, description=f"Catalog size (at least {N_LEAVES}, one per leaf category).")
    n_users: int = Field(4000, ge=1, description="Number of users.")
    min_seq_len: int = Field(5, ge=3, description="Fewest interactions per user.")
    max_seq_len: int = Field(30, ge=3, description="Most interactions per user.")
    mean_seq_len: float = Field(
        12.0, description="Approximate mean interactions per user (geometric above min_seq_len, cut at max_seq_len)."
    )
    n_brands: int = Field(120, ge=1, le=MAX_BRANDS, description="Number of brands.")
    p_no_brand: float = Field(0.15, ge=0.0, le=1.0, description="Share of items without a brand.")
    n_interests: int = Field(3, ge=1, le=N_LEAVES, description="Preferred leaf categories per user.")
    p_same_leaf: float = Field(0.45, ge=0.0, le=1.0, description="Next item from the previous item's leaf category.")
    p_complement: float = Field(
        0.2, ge=0.0, le=1.0, description="Next item from the complementary leaf (e.g. Shampoo -> Conditioner)."
    )
    p_sibling: float = Field(
        0.1, ge=0.0, le=1.0, description="Next item from another leaf of the same level-2 category."
    )
    p_same_brand: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Next item from the previous item's or the favourite brand, same level-1 category.",
    )
    p_new_interest: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="The remaining probability (1 - the four above) is a drift to another interest; "
        "this share of drifts goes to a random leaf instead of one of the user's preferred leaves.",
    )
    item_skew: float = Field(0.8, ge=0.0, description="Zipf exponent of item popularity inside a leaf category.")
    category_skew: float = Field(0.5, ge=0.0, description="Zipf exponent of leaf-category popularity.")
    min_item_count: int = Field(5, ge=1, description="Every item gets at least this many interactions.")
    image_dir: Optional[str] = Field(
        None, description="Draw a simple product PNG per item into this folder and set `image` to its path "
        "(for the caption / image-embedding stages); None = no images."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "DemoParams":
        check_sequence_lengths(self.min_seq_len, self.mean_seq_len, self.max_seq_len)
        if self.p_same_leaf + self.p_complement + self.p_sibling + self.p_same_brand > 1.0 + 1e-9:
            raise ValueError("p_same_leaf + p_complement + p_sibling + p_same_brand must be <= 1")
        if self.n_users * self.mean_seq_len < 2 * self.min_item_count * self.n_items:
            raise ValueError(
                "too few interactions for the catalog: n_users * mean_seq_len must be at least "
                "2 * min_item_count * n_items so every item can reach min_item_count"
            )
        return self


# ---------------------------------------------------------------------------------------------
# catalog


class Tree(NamedTuple):
    paths: list[list[str]]  # per leaf, [level-1, level-2, leaf]
    nouns: list[str]
    styles: list[str]
    l1: np.ndarray  # per leaf
    complement: np.ndarray  # per leaf: the next leaf in its level-2 group
    first_sibling: np.ndarray  # per leaf: the first leaf of its level-2 group
    n_siblings: np.ndarray


def category_tree() -> Tree:
    paths, nouns, styles, l1, complement, first, count = [], [], [], [], [], [], []
    for i1, (name1, groups) in enumerate(TREE):
        for name2, style, leaves in groups:
            start = len(paths)
            for j, (leaf, noun) in enumerate(leaves):
                paths.append([name1, name2, leaf])
                nouns.append(noun)
                styles.append(style)
                l1.append(i1)
                complement.append(start + (j + 1) % len(leaves))
                first.append(start)
                count.append(len(leaves))
    return Tree(paths, nouns, styles, *(np.asarray(a, dtype=np.int64) for a in (l1, complement, first, count)))


def _zipf(n: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights ``rank ** -skew`` over a random ranking of ``n`` things."""
    return (rng.permutation(n) + 1.0) ** -skew


def random_ids(prefix: str, n: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct ids: ``prefix`` + ``width`` random base-36 digits (Amazon-like ASINs / reviewer ids)."""
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    values = rng.choice(36**width, size=n, replace=False)
    digits = (values[:, None] // 36 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 36
    body = np.ascontiguousarray(alphabet[digits]).view(f"<U{width}").ravel()
    return np.char.add(prefix, body).astype(object)


class Catalog(NamedTuple):
    item_ids: np.ndarray
    leaf: np.ndarray  # per item
    brand: np.ndarray  # per item, -1 = no brand
    weight: np.ndarray  # per item popularity inside its leaf (and brand)
    brand_names: np.ndarray
    leaf_weight: np.ndarray  # per leaf popularity


def draw_catalog(p: DemoParams, tree: Tree, rng: np.random.Generator) -> Catalog:
    n_l1 = len(TREE)
    leaf_weight = _zipf(N_LEAVES, p.category_skew, rng)
    # Every leaf gets one item, the rest are spread in proportion to leaf popularity.
    rest = rng.choice(N_LEAVES, p.n_items - N_LEAVES, p=leaf_weight / leaf_weight.sum())
    leaf = np.sort(np.concatenate([np.arange(N_LEAVES), rest]))

    # Brands: a popularity, and one to three level-1 categories each (the first drawn by popularity of its leaves).
    names = np.array([o + e for o in _BRAND_ONSETS for e in _BRAND_ENDINGS], dtype=object)
    brand_names = names[rng.choice(len(names), p.n_brands, replace=False)]
    brand_weight = _zipf(p.n_brands, 1.0, rng)
    l1_weight = np.bincount(tree.l1, weights=leaf_weight, minlength=n_l1)
    sells = np.zeros((p.n_brands, n_l1), dtype=bool)
    for share in (1.0, 0.35, 0.1):  # a first category for every brand, a second for 35%, a third for 10%
        takes = np.flatnonzero(rng.random(p.n_brands) < share)
        sells[takes, rng.choice(n_l1, takes.size, p=l1_weight / l1_weight.sum())] = True
    # A level-1 category no brand sells in goes to the most popular brand.
    sells[np.argmax(brand_weight), ~sells.any(axis=0)] = True

    # An item's brand: drawn among the brands selling in its level-1 category, by brand popularity.
    item_l1 = tree.l1[leaf]
    brand = np.empty(p.n_items, dtype=np.int64)
    for c in range(n_l1):
        members = np.flatnonzero(item_l1 == c)
        sellers = np.flatnonzero(sells[:, c])
        brand[members] = rng.choice(sellers, members.size, p=brand_weight[sellers] / brand_weight[sellers].sum())
    brand[rng.random(p.n_items) < p.p_no_brand] = -1

    weight = np.empty(p.n_items)
    for lf in range(N_LEAVES):  # Zipf over a random ranking inside each leaf
        members = np.flatnonzero(leaf == lf)
        weight[members] = _zipf(len(members), p.item_skew, rng)
    item_ids = random_ids("B0", p.n_items, 8, rng)
    return Catalog(item_ids, leaf, brand, weight, brand_names, leaf_weight)


def _pick(vocab: tuple[str, ...], u: float) -> str:
    return vocab[int(u * len(vocab))]


def _item_texts(cat: Catalog, tree: Tree, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Titles and descriptions, one per item."""
    u = rng.random((len(cat.leaf), 6))
    titles, descriptions = [], []
    for i, lf in enumerate(cat.leaf):
        style = STYLES[tree.styles[lf]]
        brand = cat.brand_names[cat.brand[i]] if cat.brand[i] >= 0 else ""
        adj, attr = _pick(style.adjectives, u[i, 0]), _pick(style.attributes, u[i, 1])
        aud, size = _pick(style.audiences, u[i, 2]), _pick(style.sizes, u[i, 3])
        noun = tree.nouns[lf]
        titles.append(style.title.format(brand=brand, adj=adj, attr=attr, noun=noun, aud=aud, size=size).strip())
        template = _pick(style.descriptions, u[i, 4])
        by = f" by {brand}" if brand and u[i, 5] < 0.5 else ""
        descriptions.append(
            template.format(adj=adj.lower(), Adj=adj, attr=attr, noun=noun.lower(), aud=aud.lower(), by=by)
        )
    return titles, descriptions


# ---------------------------------------------------------------------------------------------
# users


class _Segments:
    """Draws items from segments (a leaf, a brand inside a level-1 category) by item popularity.

    Items are sorted by segment; each segment's cumulative normalised weight is offset by the
    segment id, so one ``searchsorted`` draws for many users from many segments at once.
    """

    def __init__(self, segment: np.ndarray, weight: np.ndarray, n_segments: int):
        valid = segment >= 0
        self.order = np.flatnonzero(valid)[np.argsort(segment[valid], kind="stable")]
        seg, w = segment[self.order], weight[self.order]
        self.size = np.bincount(seg, minlength=n_segments)
        total = np.bincount(seg, weights=w, minlength=n_segments)
        self.keys = seg + (np.cumsum(w) - (np.cumsum(total) - total)[seg]) / np.where(total > 0, total, 1.0)[seg]
        last = np.cumsum(self.size)[self.size > 0] - 1
        self.keys[last] = seg[last] + 1.0  # exact upper bound, so a draw never spills into the next segment

    def draw(self, segments: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self.keys, segments + rng.random(len(segments)), side="right")
        return self.order[np.minimum(pos, len(self.order) - 1)]


def _simulate(p: DemoParams, tree: Tree, cat: Catalog, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-user item sequences as a ``(n_users, max_seq_len)`` array padded with -1, and the lengths."""
    n_l1 = len(TREE)
    by_leaf = _Segments(cat.leaf, cat.weight, N_LEAVES)
    brand_l1 = np.where(cat.brand >= 0, cat.brand * n_l1 + tree.l1[cat.leaf], -1)
    by_brand = _Segments(brand_l1, cat.weight, p.n_brands * n_l1)

    extra = rng.geometric(1.0 / (p.mean_seq_len - p.min_seq_len + 1.0), p.n_users) - 1
    lengths = np.minimum(p.min_seq_len + extra, p.max_seq_len)
    # Preferred leaves: popularity-weighted sampling without replacement (Gumbel top-k).
    keys = np.log(cat.leaf_weight)[None, :] + rng.gumbel(size=(p.n_users, N_LEAVES))
    interests = np.argsort(-keys, axis=1)[:, : p.n_interests]
    favourite_brand = cat.brand[by_leaf.draw(interests[:, 0], rng)]

    history = np.full((p.n_users, p.max_seq_len), -1, dtype=np.int64)
    history[:, 0] = by_leaf.draw(interests[:, 0], rng)
    thresholds = np.cumsum([p.p_same_leaf, p.p_complement, p.p_sibling, p.p_same_brand])
    for t in range(1, p.max_seq_len):
        todo = np.flatnonzero(lengths > t)
        for _ in range(_DRAW_ATTEMPTS):
            if todo.size == 0:
                break
            prev = history[todo, t - 1]
            leaf = cat.leaf[prev]
            event = np.searchsorted(thresholds, rng.random(todo.size), side="right")
            target = leaf.copy()
            target[event == 1] = tree.complement[leaf[event == 1]]
            sib = leaf[event == 2]
            first, n_sib = tree.first_sibling[sib], tree.n_siblings[sib]
            target[event == 2] = first + (sib - first + rng.integers(1, np.maximum(n_sib, 2))) % n_sib
            drift = event == 4
            new_leaf = rng.choice(N_LEAVES, todo.size, p=cat.leaf_weight / cat.leaf_weight.sum())
            preferred = interests[todo, rng.integers(0, p.n_interests, todo.size)]
            target[drift] = np.where(rng.random(todo.size) < p.p_new_interest, new_leaf, preferred)[drift]
            item = by_leaf.draw(target, rng)
            # Brand events: the previous item's brand or the favourite one, inside the current level-1 category.
            brand = np.where(rng.random(todo.size) < 0.5, cat.brand[prev], favourite_brand[todo])
            brand = np.where(brand >= 0, brand, np.maximum(cat.brand[prev], favourite_brand[todo]))
            segment = np.where(brand >= 0, brand * n_l1 + tree.l1[leaf], 0)
            use_brand = (event == 3) & (brand >= 0) & (by_brand.size[segment] > 0)
            item[use_brand] = by_brand.draw(segment[use_brand], rng)
            fresh = ~(history[todo, :t] == item[:, None]).any(axis=1)
            history[todo[fresh], t] = item[fresh]
            todo = todo[~fresh]
        while todo.size:  # rare: every redraw repeated an item; fall back to a uniformly random one
            item = rng.integers(0, len(cat.leaf), todo.size)
            fresh = ~(history[todo, :t] == item[:, None]).any(axis=1)
            history[todo[fresh], t] = item[fresh]
            todo = todo[~fresh]
    return history, lengths


def _ensure_min_count(
    user: np.ndarray, item: np.ndarray, cat: Catalog, p: DemoParams, rng: np.random.Generator
) -> None:
    """Raises every item to ``min_item_count`` events (in place), taking events of popular items in the same leaf.

    A replaced event's user must not have the item yet, and a donor item never drops below the
    minimum, so the result is a k-core for ``k_item <= min_item_count``.
    """
    k = p.min_item_count
    counts = np.bincount(item, minlength=len(cat.leaf))
    for i in np.flatnonzero(counts < k):
        need = k - counts[i]
        has_i = np.zeros(int(user.max()) + 1, dtype=bool)
        has_i[user[item == i]] = True
        candidates = np.flatnonzero((cat.leaf[item] == cat.leaf[i]) & (counts[item] >= k + need) & ~has_i[user])
        if candidates.size < need:  # a tiny leaf: take donors anywhere in the catalog
            candidates = np.flatnonzero((counts[item] >= k + need) & ~has_i[user])
        candidates = rng.permutation(candidates)
        one_per_user = np.sort(np.unique(user[candidates], return_index=True)[1])
        chosen = candidates[one_per_user][:need]
        if chosen.size < need:
            raise ValueError("cannot give every item min_item_count interactions; raise n_users or mean_seq_len")
        np.subtract.at(counts, item[chosen], 1)
        counts[i] += need
        item[chosen] = i


def generate_demo(params: DemoParams) -> RawDataset:
    """Generates the demo shop (catalog and interactions) for ``params``; deterministic for ``params.seed``."""
    rng = np.random.default_rng(params.seed)
    tree = category_tree()
    cat = draw_catalog(params, tree, rng)
    history, lengths = _simulate(params, tree, cat, rng)

    mask = history >= 0
    user = np.nonzero(mask)[0]
    item = history[mask]
    _ensure_min_count(user, item, cat, params, rng)

    # Days: a random start, then geometric gaps (0 = same day, a tie) per user.
    starts = np.cumsum(lengths) - lengths
    gaps = rng.geometric(1.0 / (_MEAN_GAP_DAYS + 1.0), len(item)) - 1
    gaps[starts] = rng.integers(0, _HISTORY_DAYS, params.n_users)
    cum = np.cumsum(gaps)
    days = cum - np.repeat(cum[starts] - gaps[starts], lengths)
    user_ids = random_ids("A", params.n_users, 12, rng)
    interactions = pd.DataFrame(
        {
            "user_id": user_ids[user],
            "item_id": cat.item_ids[item],
            "timestamp": (EPOCH + days * _DAY).astype(np.int64),
            "rating": (rng.choice(5, len(item), p=RATING_P) + 1).astype(np.float64),
        }
    )

    titles, descriptions = _item_texts(cat, tree, rng)
    items = pd.DataFrame(
        {
            "item_id": cat.item_ids,
            "title": titles,
            "brand": pd.Series(np.where(cat.brand >= 0, cat.brand_names[cat.brand], None), dtype=object),
            "categories": [list(tree.paths[lf]) for lf in cat.leaf],
            "description": descriptions,
            "image": pd.Series([None] * params.n_items, dtype=object),
        },
        columns=list(ITEM_COLUMNS),
    )
    if params.image_dir:
        from semid_pipeline.core.data.demo_images import draw_demo_images

        items["image"] = draw_demo_images(cat.item_ids.tolist(), items["categories"].tolist(), params.image_dir, params.seed)
    return RawDataset(items, interactions)


# ---------------------------------------------------------------------------------------------
# search queries with graded relevance (the retrieval task; same schema as ESCI after loading)


class DemoQueryParams(StrictParams):
    """Search queries over the demo catalog, judged E/S/C/I like ESCI (see :func:`generate_demo_queries`)."""

    n_queries: int = Field(1500, ge=1, description="Distinct queries to generate (duplicates of a text are merged).")
    query_test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Share of queries in the test split.")
    max_exact: int = Field(8, ge=1, description="Most Exact products judged per query.")
    max_substitute: int = Field(5, ge=0, description="Most Substitute products judged per query.")
    n_complement: int = Field(2, ge=0, description="Complement products judged per query.")
    n_irrelevant: int = Field(3, ge=0, description="Irrelevant products judged per query.")
    p_category_name: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of queries naming the leaf category instead of the product noun "
        "(vocabulary mismatch between query and title)."
    )


_QUERY_KINDS = ("noun", "brand", "attr", "brand_attr")
_QUERY_KIND_P = (0.3, 0.25, 0.3, 0.15)


def _words(text: str) -> list[str]:
    return [w for w in "".join(c.lower() if c.isalnum() or c in "'-" else " " for c in text).split() if w]


def generate_demo_queries(items: pd.DataFrame, params: DemoQueryParams, seed: int = 0) -> pd.DataFrame:
    """Queries with graded relevance over a demo catalog (``generate_demo(...).items``).

    Each query starts from an anchor product and names its product noun (or, with
    ``p_category_name``, its leaf category name), optionally with its brand and/or one attribute
    word of its title (a scent, shade, material...), lower-cased: ``"lumina lavender body wash"``.
    Labels follow ESCI's definitions: **E**xact = same leaf category and every named brand /
    attribute in the product (title); **S**ubstitute = same leaf but some named constraint missing;
    **C**omplement = the leaf's complementary leaf (Shampoo -> Conditioner); **I**rrelevant = any
    other product. Per query, up to ``max_exact`` E, ``max_substitute`` S, ``n_complement`` C and
    ``n_irrelevant`` I products are judged (drawn at random). Queries are split train/test at
    random by ``query_test_fraction``.

    Returns the judged table with columns ``query_id, query, item_id, esci_label, split``
    (``esci.QUERY_COLUMNS``) before the CAT-ID2 "test products must be trained" filter. Uses its
    own random stream (``seed`` and a fixed salt), so the catalog and interactions of
    :func:`generate_demo` are unchanged.
    """
    rng = np.random.default_rng([seed, 0x51])
    tree = category_tree()
    leaf_of_path = {tuple(p): i for i, p in enumerate(tree.paths)}
    paths = [tuple(p) for p in items["categories"]]
    if any(p not in leaf_of_path for p in paths):
        raise ValueError("generate_demo_queries needs the demo catalog (every item's path a demo leaf)")
    leaf = np.array([leaf_of_path[p] for p in paths], dtype=np.int64)
    item_ids = items["item_id"].astype(str).to_numpy()
    brands = [b if isinstance(b, str) else "" for b in items["brand"]]
    title_words = [set(_words(t)) for t in items["title"]]
    noun_words = [set(_words(n)) for n in tree.nouns]
    by_leaf = [np.flatnonzero(leaf == lf) for lf in range(len(tree.paths))]
    # Attribute words of a title: not brand, not the noun, no digits, not a size word.
    stop = {"oz", "fl", "ml", "pack", "of", "set", "count", "inch", "watt", "kit", "piece", "for", "with", "and", "in", "the"}
    attrs = [
        sorted(w for w in title_words[i] - noun_words[leaf[i]] - set(_words(brands[i])) - stop if not any(c.isdigit() for c in w))
        for i in range(len(items))
    ]

    seen: dict[str, int] = {}
    rows: list[tuple[int, str, str, str]] = []
    attempts = 0
    while len(seen) < params.n_queries and attempts < 20 * params.n_queries:
        attempts += 1
        anchor = int(rng.integers(len(items)))
        kind = _QUERY_KINDS[int(rng.choice(len(_QUERY_KINDS), p=_QUERY_KIND_P))]
        lf = leaf[anchor]
        noun = tree.paths[lf][2] if rng.random() < params.p_category_name else tree.nouns[lf]
        brand = brands[anchor] if kind in ("brand", "brand_attr") else ""
        attr = str(rng.choice(attrs[anchor])) if kind in ("attr", "brand_attr") and attrs[anchor] else ""
        if kind in ("brand", "brand_attr") and not brand:
            continue
        text = " ".join(_words(" ".join(p for p in (brand, attr, noun) if p)))
        if text in seen:
            continue
        qid = len(seen)
        seen[text] = qid
        members = by_leaf[lf]
        ok = np.ones(len(members), dtype=bool)
        if brand:
            ok &= np.array([brands[m] == brand for m in members])
        if attr:
            ok &= np.array([attr in title_words[m] for m in members])
        exact, subst = members[ok], members[~ok]
        comp = by_leaf[tree.complement[lf]]
        other = np.flatnonzero((leaf != lf) & (leaf != tree.complement[lf]))
        judged = [
            (rng.permutation(exact)[: params.max_exact], "E"),
            (rng.permutation(subst)[: params.max_substitute], "S"),
            (rng.permutation(comp)[: params.n_complement], "C"),
            (rng.choice(other, min(params.n_irrelevant, len(other)), replace=False), "I"),
        ]
        for chosen, label in judged:
            rows.extend((qid, text, item_ids[m], label) for m in np.sort(chosen))
    n = len(seen)
    test = np.zeros(n, dtype=bool)
    test[rng.choice(n, int(round(params.query_test_fraction * n)), replace=False)] = True
    qids = np.array([r[0] for r in rows], dtype=np.int64)
    return pd.DataFrame(
        {
            "query_id": [str(q) for q in qids],
            "query": [r[1] for r in rows],
            "item_id": [r[2] for r in rows],
            "esci_label": [r[3] for r in rows],
            "split": np.where(test[qids], "test", "train").astype(object),
        }
    )
