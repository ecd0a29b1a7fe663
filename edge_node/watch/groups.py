"""Named groups of ImageNet classes, so a rule can say ``"cat"`` rather than five breeds (docs/detections.md).

Each entry is (index, name) in the ImageNet-1k order of ``imagenet_classes.tsv`` and of the demo bundle's
labels; a rule matches the names, so a bundle with the same labels in another order works too. A custom bundle's
own labels are used as they are: a class that is a label of the serving bundle is never read as a group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["GROUPS", "expand"]


def _span(first: int, names: str) -> tuple[tuple[int, str], ...]:
    return tuple(enumerate(names.split(";"), start=first))


_CAT = _span(281, "tabby;tiger cat;Persian cat;Siamese cat;Egyptian cat")
_DOG = _span(
    151,
    "Chihuahua;Japanese spaniel;Maltese dog;Pekinese;Shih-Tzu;Blenheim spaniel;papillon;toy terrier;"
    "Rhodesian ridgeback;Afghan hound;basset;beagle;bloodhound;bluetick;black-and-tan coonhound;Walker hound;"
    "English foxhound;redbone;borzoi;Irish wolfhound;Italian greyhound;whippet;Ibizan hound;Norwegian elkhound;"
    "otterhound;Saluki;Scottish deerhound;Weimaraner;Staffordshire bullterrier;American Staffordshire terrier;"
    "Bedlington terrier;Border terrier;Kerry blue terrier;Irish terrier;Norfolk terrier;Norwich terrier;"
    "Yorkshire terrier;wire-haired fox terrier;Lakeland terrier;Sealyham terrier;Airedale;cairn;"
    "Australian terrier;Dandie Dinmont;Boston bull;miniature schnauzer;giant schnauzer;standard schnauzer;"
    "Scotch terrier;Tibetan terrier;silky terrier;soft-coated wheaten terrier;West Highland white terrier;"
    "Lhasa;flat-coated retriever;curly-coated retriever;golden retriever;Labrador retriever;"
    "Chesapeake Bay retriever;German short-haired pointer;vizsla;English setter;Irish setter;Gordon setter;"
    "Brittany spaniel;clumber;English springer;Welsh springer spaniel;cocker spaniel;Sussex spaniel;"
    "Irish water spaniel;kuvasz;schipperke;groenendael;malinois;briard;kelpie;komondor;Old English sheepdog;"
    "Shetland sheepdog;collie;Border collie;Bouvier des Flandres;Rottweiler;German shepherd;Doberman;"
    "miniature pinscher;Greater Swiss Mountain dog;Bernese mountain dog;Appenzeller;EntleBucher;boxer;"
    "bull mastiff;Tibetan mastiff;French bulldog;Great Dane;Saint Bernard;Eskimo dog;malamute;Siberian husky;"
    "dalmatian;affenpinscher;basenji;pug;Leonberg;Newfoundland;Great Pyrenees;Samoyed;Pomeranian;chow;"
    "keeshond;Brabancon griffon;Pembroke;Cardigan;toy poodle;miniature poodle;standard poodle;Mexican hairless",
)
# Index 134 "crane" (the bird) is left out: ImageNet also has a machine called "crane" (517), and rules match
# names. Add it to a rule's own classes if a bird bundle needs it.
_BIRD = (
    _span(
        7,
        "cock;hen;ostrich;brambling;goldfinch;house finch;junco;indigo bunting;robin;bulbul;jay;magpie;chickadee;"
        "water ouzel;kite;bald eagle;vulture;great grey owl",
    )
    + _span(
        80,
        "black grouse;ptarmigan;ruffed grouse;prairie chicken;peacock;quail;partridge;African grey;macaw;"
        "sulphur-crested cockatoo;lorikeet;coucal;bee eater;hornbill;hummingbird;jacamar;toucan;drake;"
        "red-breasted merganser;goose;black swan",
    )
    + _span(127, "white stork;black stork;spoonbill;flamingo;little blue heron;American egret;bittern")
    + _span(
        135,
        "limpkin;European gallinule;American coot;bustard;ruddy turnstone;red-backed sandpiper;redshank;dowitcher;"
        "oystercatcher;pelican;king penguin;albatross",
    )
)
_CAR = (
    (407, "ambulance"),
    (436, "beach wagon"),
    (468, "cab"),
    (511, "convertible"),
    (609, "jeep"),
    (627, "limousine"),
    (656, "minivan"),
    (661, "Model T"),
    (717, "pickup"),
    (734, "police van"),
    (751, "racer"),
    (817, "sports car"),
)
_MOTORBIKE = ((665, "moped"), (670, "motor scooter"))
_BICYCLE = ((444, "bicycle-built-for-two"), (671, "mountain bike"))
_VEHICLE = (
    _CAR
    + _MOTORBIKE
    + _BICYCLE
    + (
        (555, "fire engine"),
        (569, "garbage truck"),
        (654, "minibus"),
        (675, "moving van"),
        (757, "recreational vehicle"),
        (779, "school bus"),
        (864, "tow truck"),
        (866, "tractor"),
        (867, "trailer truck"),
        (874, "trolleybus"),
    )
)

GROUPS: Mapping[str, tuple[tuple[int, str], ...]] = {
    "cat": _CAT,
    "dog": _DOG,
    "bird": _BIRD,
    "car": _CAR,
    "motorbike": _MOTORBIKE,
    "bicycle": _BICYCLE,
    "vehicle": _VEHICLE,
}


def expand(classes: Iterable[str], labels: Sequence[str] | None = None) -> frozenset[str]:
    """The label names a rule's ``classes`` stand for: a bundle's own label as it is, else a group's names,
    else the class itself (it may be a label of a bundle served later)."""
    own = frozenset(labels) if labels is not None else frozenset()
    out: set[str] = set()
    for cls in classes:
        if cls in own or cls not in GROUPS:
            out.add(cls)
        else:
            out.update(name for _, name in GROUPS[cls])
    return frozenset(out)
