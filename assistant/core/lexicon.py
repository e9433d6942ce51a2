"""A small reviewed fashion lexicon: shopper phrases -> the words catalogs use for kinds, occasions, seasons, people."""

from __future__ import annotations

# (facet kind, shopper phrase) -> the words a catalog's values may use for it, most likely first. The reader
# matches these words onto the catalog's own values (exact words first, then MiniLM), so one entry serves any
# catalog: "cardigan" finds FPI's "Sweaters" and the demo's "sweater".
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "category": {
        **dict.fromkeys(("kicks", "sneakers", "sneaker", "trainers", "trainer", "plimsolls", "plimsoll", "runners",
                         "running shoes", "canvas shoes", "high tops", "skate shoes"),
                        ("sports shoes", "casual shoes", "sneakers", "shoes")),
        **dict.fromkeys(("brogues", "oxfords", "oxford shoes", "derbies", "wingtips", "monk straps", "dress shoes",
                         "office shoes"), ("formal shoes", "shoes")),
        **dict.fromkeys(("loafers", "moccasins", "boat shoes", "deck shoes", "espadrilles", "slip ons", "slip-ons"),
                        ("casual shoes", "formal shoes", "shoes")),
        **dict.fromkeys(("pumps", "stilettos", "stilettoes", "wedges", "platforms"), ("heels",)),
        **dict.fromkeys(("ballerinas", "ballet flats", "ballet pumps", "mules"), ("flats",)),
        **dict.fromkeys(("slides", "chappals", "slippers", "thongs", "hawaii chappals"), ("flip flops", "sandals")),
        **dict.fromkeys(("boots", "ankle boots", "chelsea boots"), ("boots", "booties", "casual shoes")),
        **dict.fromkeys(("cardigan", "cardigans", "pullover", "pullovers", "jumper", "jumpers", "knitwear",
                         "knit", "knits", "turtleneck sweater"), ("sweaters", "sweater", "cardigans")),
        **dict.fromkeys(("hoodie", "hoodies", "hoody", "sweatshirt", "sweatshirts"), ("sweatshirts", "hoodies")),
        **dict.fromkeys(("polo", "polos", "polo shirt", "polo shirts", "tee", "tees", "jersey", "jerseys",
                         "graphic tee"), ("tshirts", "t-shirts", "t-shirt")),
        **dict.fromkeys(("blouse", "blouses"), ("tops", "shirts", "shirt")),
        **dict.fromkeys(("button-down", "button down", "button-downs", "button up", "button-up", "dress shirt",
                         "oxford shirt", "flannel shirt", "flannel", "formal shirt"), ("shirts", "shirt")),
        **dict.fromkeys(("tank top", "tank tops", "cami", "camis", "crop top", "crop tops", "vest top"),
                        ("tops", "camisoles")),
        **dict.fromkeys(("sweatpants", "joggers", "trackpants", "track bottoms", "jogging bottoms"),
                        ("track pants", "lounge pants", "trousers")),
        **dict.fromkeys(("pyjamas", "pajamas", "pjs", "nightwear", "sleepwear", "nightie", "nighty", "nightgown",
                         "nightshirt", "loungewear", "bed", "to bed", "in bed", "for bed", "sleep in"),
                        ("night suits", "nightdress", "lounge pants", "pyjamas")),
        **dict.fromkeys(("chinos", "slacks", "cargos", "cargo pants"), ("trousers", "pants")),
        **dict.fromkeys(("denims", "denim jeans"), ("jeans",)),
        **dict.fromkeys(("tote", "totes", "tote bag", "shoulder bag", "satchel", "hobo bag", "bucket bag",
                         "crossbody bag", "handbag"), ("handbags",)),
        **dict.fromkeys(("purse", "purses"), ("handbags", "clutches", "wallets")),
        **dict.fromkeys(("billfold", "card holder", "cardholder", "money clip"), ("wallets",)),
        **dict.fromkeys(("backpack", "rucksack", "school bag", "daypack"), ("backpacks", "rucksacks")),
        **dict.fromkeys(("shades", "sunnies", "sun glasses"), ("sunglasses",)),
        **dict.fromkeys(("wristwatch", "timepiece", "smartwatch"), ("watches",)),
        **dict.fromkeys(("chain", "choker", "locket"), ("necklace and chains", "pendant", "necklace")),
        **dict.fromkeys(("studs", "hoops", "jhumkas", "danglers"), ("earrings",)),
        **dict.fromkeys(("coat", "coats", "parka", "windcheater", "anorak", "bomber", "puffer", "raincoat"),
                        ("jackets", "jacket", "rain jacket")),
        **dict.fromkeys(("blazer", "sport coat", "suit jacket"), ("blazers", "jacket")),
        **dict.fromkeys(("gown", "gowns", "frock", "frocks", "sundress", "sun dress"), ("dresses", "dress")),
        **dict.fromkeys(("onesie", "playsuit", "romper"), ("rompers", "jumpsuit")),
        **dict.fromkeys(("kurti",), ("kurtis", "kurtas")),
        **dict.fromkeys(("salwar kameez", "salwar suit", "churidar kurta"), ("kurta sets", "salwar and dupatta")),
        **dict.fromkeys(("sari", "saris"), ("sarees",)),
        **dict.fromkeys(("lehenga", "lehengas", "ghagra"), ("lehenga choli",)),
        **dict.fromkeys(("beanie", "beanies", "baseball cap"), ("caps", "hat")),
        **dict.fromkeys(("swimsuit", "swimsuits", "bikini", "swimming costume", "swim trunks", "bathing suit"),
                        ("swimwear",)),
        **dict.fromkeys(("bralette", "sports bra"), ("bra",)),
        **dict.fromkeys(("underwear", "undies", "knickers"), ("briefs", "boxers", "trunk")),
        **dict.fromkeys(("cologne", "scent", "fragrance", "eau de toilette"), ("perfume and body mist",)),
        **dict.fromkeys(("tights", "pantyhose"), ("tights", "stockings")),
        **dict.fromkeys(("miniskirt", "mini skirt", "pencil skirt"), ("skirts", "skirt")),
        **dict.fromkeys(("bermudas", "hot pants"), ("shorts",)),
    },
    "usage": {
        **dict.fromkeys(("office", "work", "workwear", "meeting", "board meeting", "interview", "job interview",
                         "business", "corporate", "conference", "presentation", "formal event", "boardroom"),
                        ("formal",)),
        **dict.fromkeys(("gym", "yoga", "hiking", "hike", "trek", "trekking", "running", "run", "jogging", "workout",
                         "training", "football", "cricket", "tennis", "cycling", "athletic", "exercise", "marathon",
                         "sport", "pilates", "basketball"), ("sports",)),
        **dict.fromkeys(("sangeet", "puja", "pooja", "diwali", "mehendi", "mehndi", "eid", "festive", "festival",
                         "traditional", "navratri", "garba", "haldi", "temple", "indian wedding"), ("ethnic",)),
        **dict.fromkeys(("date night", "date", "club", "clubbing", "cocktail", "cocktails", "night out", "prom",
                         "birthday party", "disco", "new years eve", "party wear"), ("party",)),
        **dict.fromkeys(("everyday", "weekend", "brunch", "college", "daily wear", "errands", "hanging out"),
                        ("casual",)),
        **dict.fromkeys(("lounging", "at home", "around the house", "bedtime", "sleeping"), ("home",)),
        **dict.fromkeys(("vacation", "holiday", "trip", "airport", "flight", "backpacking"), ("travel",)),
        **dict.fromkeys(("business casual", "dinner", "smart"), ("smart casual",)),
    },
    "season": {
        **dict.fromkeys(("cold", "chilly", "snow", "snowy", "freezing", "frosty", "cold weather", "wintry"),
                        ("winter",)),
        **dict.fromkeys(("hot", "heat", "sunny", "beach", "humid", "heatwave", "hot weather", "warm weather"),
                        ("summer",)),
        **dict.fromkeys(("autumn", "autumnal"), ("fall", "autumn")),
        **dict.fromkeys(("monsoon", "rainy", "rainy season"), ("monsoon", "rain", "fall")),
    },
    "pattern": {
        **dict.fromkeys(("polka", "spotty", "spotted"), ("dots", "polka dot", "dotted")),
        **dict.fromkeys(("plaid", "tartan", "gingham", "chequered"), ("checks", "checked")),
        **dict.fromkeys(("pinstripe", "pinstriped", "breton", "pinstripes"), ("stripes", "striped")),
        **dict.fromkeys(("flowery", "flowers", "botanical"), ("floral",)),
        **dict.fromkeys(("plain", "unprinted"), ("solid",)),
    },
    "fit": {
        **dict.fromkeys(("tight", "skinny", "fitted", "bodycon", "snug"), ("slim",)),
        **dict.fromkeys(("baggy", "oversized", "relaxed", "roomy", "flowy"), ("loose",)),
    },
    "length": {
        **dict.fromkeys(("floor length", "ankle length", "long dress"), ("maxi", "full")),
        **dict.fromkeys(("short dress", "above the knee"), ("mini",)),
        **dict.fromkeys(("midi",), ("knee",)),
        **dict.fromkeys(("crop", "cropped"), ("cropped",)),
    },
    "neckline": {
        **dict.fromkeys(("crew neck", "crewneck"), ("round",)),
        **dict.fromkeys(("vneck", "v neck", "plunging"), ("v-neck",)),
        **dict.fromkeys(("collared", "shirt collar"), ("collar",)),
    },
    "sleeve": {
        **dict.fromkeys(("strapless", "tank", "sleeveless"), ("sleeveless",)),
        **dict.fromkeys(("full sleeves", "full sleeve"), ("long",)),
        **dict.fromkeys(("half sleeves", "half sleeve", "short sleeved"), ("short",)),
    },
}

# Kinds of garment made for one sex, and who that is, as (sex, age): "a blouse" is a woman's or a girl's.
KIND_PEOPLE: dict[str, tuple[str, str]] = dict.fromkeys(
    ("blouse", "blouses", "bralette", "sports bra", "bikini", "nightie", "nighty", "nightgown", "gown", "gowns",
     "frock", "frocks", "sundress", "sun dress", "cami", "camis", "kurti", "sari", "saris", "lehenga", "lehengas",
     "ghagra", "salwar kameez", "salwar suit", "churidar kurta", "miniskirt", "mini skirt", "pencil skirt",
     "stilettos", "stilettoes", "ballerinas", "ballet flats", "ballet pumps", "pantyhose"), ("female", "any"))

# Who a shopper buys for, as (sex, age): "any" is either.
PEOPLE: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("man", "men", "mens", "guy", "guys", "husband", "hubby", "boyfriend", "father", "dad", "daddy",
                     "grandfather", "grandpa", "granddad", "uncle", "brother", "father in law", "brother in law",
                     "son in law", "fiance", "groom", "gentleman", "gentlemen", "him", "male", "gents", "he"),
                    ("male", "adult")),
    **dict.fromkeys(("woman", "women", "womens", "lady", "ladies", "wife", "girlfriend", "mother", "mom", "mum",
                     "mommy", "mummy", "grandmother", "grandma", "granny", "gran", "nana", "aunt", "auntie", "sister",
                     "mother in law", "sister in law", "daughter in law", "fiancee", "bride", "her", "female", "she",
                     "bridesmaid"), ("female", "adult")),
    **dict.fromkeys(("boy", "boys", "son", "nephew", "grandson", "schoolboy", "little brother"), ("male", "child")),
    **dict.fromkeys(("girl", "girls", "daughter", "niece", "granddaughter", "schoolgirl", "little sister"),
                    ("female", "child")),
    **dict.fromkeys(("kid", "kids", "child", "children", "toddler", "toddlers", "baby", "babies", "infant",
                     "newborn", "little one", "preschooler", "grandchild", "grandkid"), ("any", "child")),
    **dict.fromkeys(("anyone", "unisex", "couple", "both of us", "everyone"), ("any", "adult")),
}
# How catalogs name who an item is for, as (sex, age): read from a gender-like value's own words.
AUDIENCE_WORDS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("men", "man", "mens", "male", "gents", "him"), ("male", "adult")),
    **dict.fromkeys(("women", "woman", "womens", "female", "ladies", "lady", "her"), ("female", "adult")),
    **dict.fromkeys(("boys", "boy"), ("male", "child")),
    **dict.fromkeys(("girls", "girl"), ("female", "child")),
    **dict.fromkeys(("kids", "kid", "children", "child", "baby", "infant", "toddler", "junior"), ("any", "child")),
    **dict.fromkeys(("unisex", "all", "adult", "adults"), ("any", "adult")),
}
UNISEX_CREDIT = 0.8  # a unisex item for a shopper who asked for one sex

# Words describing each facet kind, appended to a value's own words in its MiniLM description.
KIND_GLOSS = {
    "category": "a kind of clothing, footwear or accessory", "colour": "a colour", "gender": "who it is for",
    "usage": "an occasion to wear it", "season": "a season and its weather", "pattern": "a pattern or print",
    "sleeve": "sleeve length", "length": "garment length", "neckline": "neckline", "fit": "fit",
    "material": "fabric", "tags": "a style", "generic": "a product attribute",
}


def audience(value: str) -> tuple[str, str] | None:
    """(sex, age) a gender-like label names ("Boys" -> male child), or None when its words name no one."""
    words = value.lower().replace("'", "").replace("-", " ").split()
    found = [AUDIENCE_WORDS[word] for word in words if word in AUDIENCE_WORDS]
    return found[0] if found else None


def audience_credit(person: tuple[str, str], value: tuple[str, str]) -> float:
    """How well an item for `value` suits a shopper buying for `person` (0 when the age or sex differ)."""
    if person[1] != value[1] and person[1] != "any":
        return 0.0
    if person[0] == value[0] or person[0] == "any":
        return 1.0
    return UNISEX_CREDIT if value[0] == "any" else 0.0
